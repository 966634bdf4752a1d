r"""refmem's gradients in flash-linear-attention's names and spaces.

fla's kernels take ``q, k, v``, a step size ``beta``, a forget gate in log
space (``g`` per step, ``gk`` per key channel), a ``scale`` applied to ``q``
and an initial state ``h0`` stored as :math:`S = M^T` (``[K, V]``); their
backward returns ``dq, dk, dv, dbeta, dg`` (or ``dgk``) and ``dh0``. From
refmem's VJP (:mod:`refmem.backward`), by the chain rule:

.. math::

    dq_{\mathrm{fla}} = s\, dq \quad (\text{fla reads } s\, q_{\mathrm{fla}}), \qquad
    dg = a \odot da \quad (g = \log a), \qquad dh_0 = dM_0^T ,

and ``dk, dv, dbeta`` unchanged. Gates are mapped by meaning: fla's ``g`` is the
log of what the state *keeps* (:data:`refmem.gate_meanings.GATE_MEANINGS`, the
table the forward layouts read too): every memory with a kept fraction among
its gates (the gated delta rule, GLA, Omega, Yaad, Moneta, the deep memory)
gets ``dg``; for a memory whose gate is a forgetting rate (Titans' ``alpha``:
the memory keeps ``1 - alpha``), ``g = log(1 - alpha)`` and
:math:`dg = -(1 - \alpha) \odot d\alpha`.

Only names and spaces are mapped here; the axis order (fla's ``[B, T, H, d]``
against refmem's ``[..., T, d]``) is the layout adapter's business
(:mod:`refmem.conform`).
"""

from __future__ import annotations

from ..gate_meanings import FORGET_GATES  # {memory: (gate, "kept" | "forgotten")}, from GATE_MEANINGS


def to_fla(name: str, grads: dict, inputs: dict, *, scale: float = 1.0, gate_space: str = "log") -> dict:
    r"""refmem's gradient dict of memory ``name`` in fla's names and spaces (module docstring).

    Parameters
    ----------
    name : str
        Registered memory name.
    grads : dict
        The VJP's result (``q, k, v``, gates, ``initial_state``).
    inputs : dict
        The forward's inputs (the gates are needed for ``dg = a da``).
    scale : float
        The scale fla applies to ``q`` (its read-out is ``M (scale q)``).
    gate_space : {"log", "linear"}
        How the kernel takes the forget gate: ``g = log(kept)`` (fla's own,
        ``dg = kept dkept``) or ``g = kept`` (``dg = dkept``).

    Returns
    -------
    dict
        ``dq, dk, dv``, ``dbeta`` (when the memory has ``beta``), ``dg`` or
        ``dgk`` (when it has a forget gate; ``dgk`` for a per-key-channel gate),
        ``dh0`` (``[..., d_k, d_v]``; a state of several parts, which fla has
        no name for, stays ``dinitial_state``), and the remaining gates as ``d<name>``.
    """
    if not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"scale must be a number; got {type(scale).__name__}")
    if gate_space not in ("log", "linear"):
        raise ValueError(f"gate_space must be 'log' or 'linear'; got {gate_space!r}")
    out = {"dq": scale * grads["q"], "dk": grads["k"], "dv": grads["v"]}
    gate, meaning = FORGET_GATES.get(name, (None, None))
    for key, g in grads.items():
        if key in ("q", "k", "v"):
            continue
        if key == "initial_state" and isinstance(g, tuple):  # a state of several parts has no fla name
            out["dinitial_state"] = g
        elif key == "initial_state":
            out["dh0"] = _transpose(g)  # fla's state is S = M^T
        elif key == gate:
            a = inputs[gate]
            per_channel = a.ndim == inputs["k"].ndim
            kept = a if meaning == "kept" else 1 - a
            dkept = g if meaning == "kept" else -g  # d/d(kept) of L, from d/d(alpha)
            # g = log(kept): dL/dg = kept dL/dkept; g = kept: dL/dg = dL/dkept
            out["dgk" if per_channel else "dg"] = kept * dkept if gate_space == "log" else dkept
        else:
            out["d" + key] = g
    return out


def _transpose(x):
    from ..backends import namespace_of

    return namespace_of(x).matrix_transpose(x)
