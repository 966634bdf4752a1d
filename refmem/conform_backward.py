r"""The conformance runner for gradients: check a kernel's backward pass against refmem's expected gradients.

NumPy-only module (comparison on the host), like :mod:`refmem.conform`, whose
layouts, casting and comparison it reuses. The expected gradients come from
test vectors of format version 2 (:mod:`refmem.vector_gradients`): per case
the cotangents ``do``, ``dM_T`` and the gradients of
:math:`\mathcal L = \langle do, o\rangle + \langle dM_T, M_T\rangle` in every input.

Command line::

    refmem conform MODULE:FUNCTION --spec NAME --backward [--vjp MODULE:FUNCTION] [--layout refmem|fla] [layout options]

(the forward outputs are checked first, as without ``--backward``, then every gradient).

Where the kernel's gradients come from
--------------------------------------
``vjp`` given (``--vjp MODULE:FUNCTION``)
    called with the kernel's own arguments (the layout's and its options',
    :mod:`refmem.kernel_layouts`: the very call the forward check makes) plus
    the cotangents of its outputs as keywords, and returns a mapping
    ``{name: gradient}``:

    * layout ``refmem``: ``vjp(q, k, v, **gates, initial_state=M0, do=do, dM_T=dM_T)``
      (``dM_T`` a tuple for a state of several parts), returning the gradients
      keyed by the argument names (``q, k, v``, each gate, ``initial_state``),
      as refmem's own VJPs do (:mod:`refmem.backward`);
    * layout ``fla``: ``vjp(q, k, v, **gates, initial_state=h0, output_final_state=True,
      do=do, dht=dht)`` with ``do [B, T, H, V]`` and ``dht [B, H, K, V]`` (the
      cotangent of :math:`S_T = M_T^T`; ``[B, H, V, K]`` with ``state_v_first``),
      returning fla's names ``dq, dk, dv``, ``dbeta``, ``dg`` (or ``dgk``),
      ``dh0`` and ``d<gate>`` for any other gate.

    A case the layout sends in several calls (a packed case without the
    ``cu_seqlens`` option: one call per sequence) gets one ``vjp`` call per
    call, with that call's cotangents; the gradients are laid back together
    along time (``dh0`` along its first axis, one per sequence).
``vjp`` omitted: torch autograd
    the kernel's outputs must be torch tensors that require grad. refmem imports
    torch (only then), hands the kernel leaf tensors (``convert``'s result, or
    ``torch.from_numpy``, detached and set to require grad; ``cu_seqlens`` as an
    integer tensor without grad) and calls ``torch.autograd.grad`` on
    ``(o, state)`` with the cotangents. An input the outputs do not depend on
    gets a zero gradient (so a kernel that ignores the initial state's gradient
    fails on ``dh0``).

Gradients, names and spaces
---------------------------
Reported as ``d<argument>`` in the refmem layout (``dq``, ``dbeta``,
``dinitial_state``) and by fla's names in the fla layout
(:mod:`refmem.backward.fla_names`). Every map the forward layout applies to an
input is applied to its gradient by the chain rule, so the kernel's gradient
of the argument it received is compared (``specs/kernel_layouts.md``, "Backward"):

* fla's default scale: the kernel receives ``q sqrt(K)``, so :math:`dq_{fla} = dq / \sqrt K`;
* the forget gate (:mod:`refmem.gate_meanings`): ``g = log(kept)``, so
  ``dg = kept dkept`` (``dgk`` per key channel; ``dkept = da``, or ``-dalpha``
  for a forgetting rate); with ``gate_space="linear"`` ``g = kept`` and ``dg = dkept``;
* the state: ``dh0 = dM_0^T`` (``[K, V]``), or ``dM_0`` with ``state_v_first``;
  under ``state_v_first=False`` in the refmem layout ``dinitial_state = dM_0^T``;
* ``value_heads_per_qk = G``: the kernel's ``q, k`` head ``j`` is broadcast to
  value heads ``G j .. G j + G - 1``, so its ``dq, dk`` are the sums of refmem's
  over those heads (the VJP of a broadcast is a sum);
* ``cu_seqlens``: the gradients laid out like the packed inputs
  (``[1, sum T_i, H, d]``), ``dh0`` one per sequence ``[N, H, K, V]``;
* ``use_qk_l2norm_in_kernel``: the kernel receives ``x = r u`` (``u`` the
  case's unit ``q`` or ``k``) and reads ``x / |x|``, so its gradient is
  :func:`l2norm_vjp`: :math:`dx = (I - \hat x \hat x^T)\, du / |x|`;
* ``scale = S`` (and the read-out scale of ``use_qk_l2norm_in_kernel``): the
  kernel's read-out is ``S`` times refmem's, so it receives the cotangent
  ``do / S``: the loss is refmem's ``L`` itself, and ``q`` (sent as it is)
  has refmem's ``dq``.

Tolerance of a gradient
-----------------------
The vector file's tolerance of that gradient for the dtype compared:
``8 eps 2 (T + d_k + d_v) max(1, kappa_g)`` (:mod:`refmem.vector_gradients`),
under the forward's pass criterion (``max`` and ``rms`` relative error, per
gradient; :func:`refmem.conform.compare`). Transposes, axis moves, reshapes and
constant factors leave a relative error unchanged. The maps that rescale entry
by entry, or add entries up, widen it by the factor they can magnify an error
by (at least 1; an all-zero gradient is compared absolutely):

* ``dg = a da``: an error ``e`` with ``max|e| <= tol max|da|`` becomes at most
  ``max|a| tol max|da|``: factor ``max|a| max|da| / max|dg|``;
* the sum over a group of ``G`` value heads: the errors add, at most
  ``tol sum_j max|dq_j|``: factor ``sum_j max|dq_j| / max|dq_sum|``;
* the l2 normalisation: a projection (norm 1) and a division by ``|x_t|``:
  an error of 2-norm ``tol |du_t|`` becomes at most ``tol |du_t| / |x_t|``:
  factor ``max_t(|du_t| / |x_t|) / max|dx|``.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Callable

import numpy as np

from .backward.fla_names import FORGET_GATES, to_fla
from .conform import (ConformResult, ConvertError, Row, _accepts, _Cast, _check_arguments, _names, compare,
                      layout_from, load_or_generate, passed_or_raise, resolve, select_cases, to_numpy)
from .kernel_layouts import Layout, NotApplicable, build_call, pack_rows, raw_qk, time_second, to_bh
from .packed_sequences import CU_SEQLENS, sequence_bounds, split_cotangents
from .vector_manifest import unflatten
from .vectors import Case, VectorError, generate, registry

__all__ = ["assert_backward_conforms", "check_backward", "expected_gradients", "l2norm_vjp"]


class NoGradientsError(ValueError):
    """The spec or the vector set has no expected gradients (a usage error: nothing to compare)."""


# ---------------------------------------------------------------- the maps' gradients


def l2norm_vjp(x: np.ndarray, du: np.ndarray) -> np.ndarray:
    r"""The gradient in ``x`` through ``u = x / |x|`` (per row, last axis), given ``du = dL/du``.

    .. math::

        \frac{\partial u}{\partial x} = \frac{I - \hat x \hat x^T}{|x|}, \qquad
        dx = \frac{du - \hat x\, \langle \hat x, du\rangle}{|x|}, \qquad \hat x = x / |x|

    (the Jacobian is symmetric, so it is its own transpose).
    """
    n = np.linalg.norm(x, axis=-1, keepdims=True)  # (..., T, 1)
    xh = x / n  # (..., T, d)
    return (du - xh * np.sum(xh * du, axis=-1, keepdims=True)) / n  # (..., T, d)


def _magnification(bound: float, result: np.ndarray) -> float:
    """``bound / max|result|`` at least 1: how much a map can magnify a relative error (module docstring)."""
    top = float(np.max(np.abs(result))) if result.size else 0.0
    if top == 0 or bound == 0:
        return 1.0  # an all-zero gradient is compared absolutely (refmem.metrics.rel_error)
    return max(1.0, bound / top)


def _through_l2norm(x_raw: np.ndarray, du: np.ndarray) -> tuple[np.ndarray, float]:
    """:func:`l2norm_vjp` and its magnification ``max_t(|du_t| / |x_t|) / max|dx|``."""
    dx = l2norm_vjp(x_raw, du)  # (..., T, d)
    per_row = np.linalg.norm(du, axis=-1) / np.linalg.norm(x_raw, axis=-1)  # (..., T)
    return dx, _magnification(float(np.max(per_row)) if per_row.size else 0.0, dx)


def _sum_over_groups(g: np.ndarray, G: int) -> tuple[np.ndarray, float]:
    """``(B, H, ...) -> (B, H / G, ...)``: the sum over each group of ``G`` heads, and its magnification."""
    B, H = g.shape[:2]
    summed = g.reshape((B, H // G, G) + g.shape[2:]).sum(axis=2)  # (B, H / G, ...)
    bound = sum(float(np.max(np.abs(g[:, j::G]))) for j in range(G))  # sum_j max|g_j|, member j of every group
    return summed, _magnification(bound, summed)


def _read_out_scale(case: Case, lay: Layout) -> float:
    """The factor the kernel's read-out carries over refmem's ``M_t q_t`` (1 when fla's scale is cancelled)."""
    return 1.0 if lay.prescales_q else lay.read_out_scale(case.inputs["k"].shape[-1])


# ---------------------------------------------------------------- expected gradients in a layout


def expected_gradients(case: Case, layout, dtype: str) -> dict:
    """``{gradient name: (expected float64 array, tolerance)}`` of ``case`` in ``layout`` (module docstring).

    ``layout`` is ``"refmem"``, ``"fla"`` or a :class:`~refmem.kernel_layouts.Layout`
    with options. Raises :class:`~refmem.kernel_layouts.NotApplicable` for a
    case the layout cannot express.
    """
    lay = layout if isinstance(layout, Layout) else Layout(layout)
    inputs = case.inputs
    tol = {n: t[dtype] for n, t in case.gradient_tolerance.items()}  # flattened names (initial_state.0, ...)
    grads = dict(case.gradients)
    if lay.use_qk_l2norm_in_kernel:  # the kernel receives x = r u and reads u = x / |x|
        for n, raw in zip(("q", "k"), raw_qk(case, inputs["q"], inputs["k"])):
            grads[n], factor = _through_l2norm(raw, grads[n])
            tol[n] *= factor
    if lay.name == "refmem":
        out = {}
        for n, g in grads.items():
            if n.startswith("initial_state") and not lay.v_first:
                if n != "initial_state":
                    raise NotApplicable("state_v_first=False transposes a single matrix state; this memory's state "
                                        "has several parts")
                g = np.swapaxes(g, -1, -2)  # dM_0^T: (..., d_k, d_v)
            out[f"d{n}"] = (g, tol[n])
        return out
    nested = unflatten(grads)
    if isinstance(nested.get("initial_state"), tuple):
        raise NotApplicable("the fla layout needs a single matrix state; this memory's initial state has several parts")
    K = inputs["k"].shape[-1]
    mapped = to_fla(case.spec, nested, inputs, scale=K ** -0.5 if lay.prescales_q else 1.0,
                    gate_space="log" if lay.log_gates else "linear")  # fla's names and spaces, refmem's axes
    gate, meaning = FORGET_GATES.get(case.spec, (None, None))
    lead = tuple(inputs["k"].shape[:-2])
    packed_case = CU_SEQLENS in inputs
    G = lay.value_heads_per_qk
    out = {}
    for name, g in mapped.items():
        source = {"dq": "q", "dk": "k", "dv": "v", "dh0": "initial_state", "dg": gate, "dgk": gate}.get(name, name[1:])
        t = tol[source]
        if name in ("dg", "dgk") and lay.log_gates:  # dg = kept dkept rescales entry by entry
            kept = inputs[gate] if meaning == "kept" else 1 - inputs[gate]
            t *= _magnification(float(np.max(np.abs(kept))) * float(np.max(np.abs(nested[gate]))), g)
        if name == "dh0":
            arr = g if packed_case else to_bh(g, lead)  # (N, H, K, V): to_fla transposed it
            if lay.v_first:
                arr = np.swapaxes(arr, -1, -2)  # back to dM_0: (N, H, V, K)
        else:
            arr = to_bh(g, lead)  # (B, H, T, ...)
            if G > 1 and name in ("dq", "dk"):  # one q, k head per group of G value heads
                arr, factor = _sum_over_groups(arr, G)
                t *= factor
            if lay.cu_seqlens and not packed_case:
                arr = pack_rows(arr)  # (1, H, B T, ...)
            arr = time_second(arr)  # (B, T, H, ...)
        out[name] = (arr, t)
    return out


def cotangents_per_call(case: Case, lay: Layout) -> list[dict]:
    """The cotangents of the kernel's outputs, one set per call the layout makes (module docstring).

    refmem: ``do [..., T, V]`` and ``dM_T`` (``dM_T^T`` under ``state_v_first=False``);
    fla: ``do [B, T, H, V]`` and ``dht = dM_T^T [N, H, K, V]`` (``dM_T`` with
    ``state_v_first``). ``do`` is divided by the read-out's scale, so that the
    kernel's loss is refmem's ``L``.
    """
    inputs = case.inputs
    do = case.cotangents["do"] / _read_out_scale(case, lay)  # (..., T, V)
    dM_T = case.cotangents["dM_T"]
    packed_case = CU_SEQLENS in inputs
    if lay.name == "refmem":
        if not lay.v_first:
            dM_T = np.swapaxes(dM_T, -1, -2)  # a single matrix (build_call refuses the others): (..., K, V)
        whole = {"do": do, "dM_T": dM_T}
        return split_cotangents(inputs[CU_SEQLENS], whole) if packed_case else [whole]
    lead = tuple(inputs["k"].shape[:-2])
    do = to_bh(do, lead)  # (B, H, T, V)
    if lay.cu_seqlens and not packed_case:
        do = pack_rows(do)  # (1, H, B T, V)
    do = time_second(do)  # (B, T, H, V)
    dM = dM_T if packed_case else to_bh(dM_T, lead)  # (N, H, V, K)
    dht = dM if lay.v_first else np.swapaxes(dM, -1, -2)  # (N, H, K, V) unless V first
    if packed_case and not lay.cu_seqlens:  # one call per sequence
        return [{"do": do[:, s:e], "dht": dht[i:i + 1]} for i, (s, e) in enumerate(sequence_bounds(inputs[CU_SEQLENS]))]
    return [{"do": do, "dht": dht}]


class _Misshapen:
    """A gradient whose per-call pieces cannot be laid back together (a failing row, with the reason)."""

    def __init__(self, detail: str):
        self.detail = detail


def merge_gradients(parts: list[dict], lay: Layout, inputs: dict) -> dict:
    """The kernel's gradients of several calls (one per sequence) laid together like the packed case's."""
    if len(parts) == 1:
        return parts[0]
    merged = {}
    for n in parts[0]:
        if not all(n in p for p in parts):
            continue  # reported as not returned
        if lay.name == "fla":
            axis = 0 if n == "dh0" else 1
        else:
            base = n[1:].split(".")[0]
            axis = 0 if base == "initial_state" else (-2 if inputs.get(base, inputs["k"]).ndim == inputs["k"].ndim else -1)
        try:
            merged[n] = np.concatenate([p[n] for p in parts], axis=axis)
        except ValueError as exc:
            merged[n] = _Misshapen(f"its pieces from the {len(parts)} calls (one per sequence) do not fit together "
                                   f"({', '.join(str(p[n].shape) for p in parts)}: {exc})")
    return merged


# ---------------------------------------------------------------- the kernel's gradients


def _from_vjp(vjp, inv, cot: dict, layout: str) -> dict:
    """The ``vjp``'s mapping, names as the layout reports them; a state of several parts flattened (``.i``)."""
    raw = vjp(*inv.args, **inv.kwargs, **cot)
    if not hasattr(raw, "items"):
        raise TypeError(f"the vjp returned a {type(raw).__name__}; it must return a mapping {{gradient name: array}}")
    out = {}
    for n, g in raw.items():
        label = f"d{n}" if layout == "refmem" else n
        if isinstance(g, (tuple, list)):
            out.update({f"{label}.{i}": to_numpy(x) for i, x in enumerate(g)})
        elif g is not None:
            out[label] = to_numpy(g)
    return out


def _torch_leaves(inv, convert, layout: str):
    """The call's arrays as torch leaf tensors that require grad; returns ``(args, kwargs, {label: leaf})``.

    ``cu_seqlens`` (integer offsets) is handed over as a tensor without grad.
    """
    import torch

    def tensor(a, where):
        t = convert(a) if convert is not None else torch.from_numpy(a)
        if not isinstance(t, torch.Tensor):
            raise ConvertError(f"returned a {type(t).__name__} for {where}; the torch-autograd route needs torch tensors "
                               "(or pass --vjp)")
        return t

    def leaf(a, where):
        return tensor(a, where).detach().requires_grad_(True)

    def label(name):
        if layout == "fla":
            return "dh0" if name == "initial_state" else f"d{name}"
        return f"d{name}"

    leaves = {}
    args = []
    for name, a in zip(("q", "k", "v"), inv.args):
        args.append(leaf(a, name))
        leaves[label(name)] = args[-1]
    kwargs = {}
    for name, a in inv.kwargs.items():
        if name == CU_SEQLENS and isinstance(a, np.ndarray):
            kwargs[name] = tensor(a, name)
        elif isinstance(a, np.ndarray):
            kwargs[name] = leaves[label(name)] = leaf(a, name)
        elif isinstance(a, tuple) and all(isinstance(x, np.ndarray) for x in a):
            kwargs[name] = tuple(leaf(x, f"{name}[{i}]") for i, x in enumerate(a))
            leaves.update({f"{label(name)}.{i}": x for i, x in enumerate(kwargs[name])})
        else:
            kwargs[name] = a
    return tuple(args), kwargs, leaves


def _from_autograd(fn, inv, convert, cot: dict, layout: str, n_states: int) -> dict:
    """torch autograd through the kernel: ``d<input> = (d(o, state)/d input)^T (do, dM_T)``."""
    import torch

    args, kwargs, leaves = _torch_leaves(inv, convert, layout)
    raw = fn(*args, **kwargs)
    flat = list(raw) if isinstance(raw, (tuple, list)) else [raw]
    if len(flat) == 2 and isinstance(flat[1], (tuple, list)) and n_states > 1:
        flat = [flat[0], *flat[1]]
    flat = [x for x in flat if x is not None]
    if len(flat) != 1 + n_states:
        raise TypeError(f"the kernel returned {len(flat)} output(s); the backward check needs o and the final state "
                        f"({1 + n_states} arrays) to apply their cotangents")
    state_cot = cot["dM_T" if layout == "refmem" else "dht"]
    cot_parts = [cot["do"]] + (list(state_cot) if n_states > 1 else [state_cot])
    outs, grads_out = [], []
    for i, (y, c) in enumerate(zip(flat, cot_parts)):
        if not isinstance(y, torch.Tensor) or not y.requires_grad:
            what = "o" if i == 0 else "the final state"
            raise TypeError(f"output {what} is not a torch tensor that requires grad (its inputs were leaves that "
                            "require grad): pass --vjp MODULE:FUNCTION for a kernel outside torch autograd")
        c = to_numpy(c)
        if tuple(c.shape) != tuple(y.shape):
            raise TypeError(f"output {'o' if i == 0 else 'the final state'} has shape {tuple(y.shape)}, the layout "
                            f"expects {tuple(c.shape)}")
        outs.append(y)
        grads_out.append(torch.as_tensor(c, dtype=y.dtype, device=y.device))
    names = list(leaves)
    got = torch.autograd.grad(outs, [leaves[n] for n in names], grads_out, allow_unused=True)
    return {n: (np.zeros(tuple(leaves[n].shape)) if g is None else to_numpy(g.detach().cpu()))
            for n, g in zip(names, got)}


# ---------------------------------------------------------------- the check


def _load_with_gradients(spec: str, vectors, cases) -> list[Case]:
    """The cases of ``spec`` with their gradients; ``NoGradientsError`` when there are none to compare."""
    mem = registry()[spec]
    if getattr(mem, "backward", None) is None:
        with_bw = sorted(n for n, m in registry().items() if getattr(m, "backward", None) is not None)
        raise NoGradientsError(f"spec {spec!r} has no backward pass in this refmem, so no expected gradients; "
                               f"--backward checks: {', '.join(with_bw)}")
    loaded = load_or_generate(vectors, spec)
    if vectors is not None and not any(c.gradients for c in loaded):
        raise NoGradientsError(f"the vectors in {os.fspath(vectors)!r} hold no gradients for {spec!r} (format "
                               "version 1, or written before it had a backward pass): regenerate them with "
                               "`refmem vectors generate`")
    return select_cases(loaded, spec, cases)


def check_backward(fn: Callable, *, spec: str, vectors: str | None = None, layout="refmem",
                   dtype: str = "float64", convert: Callable | None = None, vjp: Callable | None = None,
                   cases=None, name: str | None = None, state_v_first: bool | None = None,
                   gate_space: str | None = None, value_heads_per_qk: int = 1, cu_seqlens: bool = False,
                   use_qk_l2norm_in_kernel: bool = False, scale: float | None = None) -> ConformResult:
    r"""Compare a kernel's gradients with refmem's on the test vectors of ``spec``, one row per case and gradient.

    Parameters
    ----------
    fn : callable
        The kernel's forward, called as ``layout`` and its options say (:mod:`refmem.kernel_layouts`).
    spec : str
        A registered memory with a backward pass.
    vectors : str, optional
        A directory written by ``refmem vectors generate`` (format version 2);
        generated in a temporary directory when omitted.
    layout : {"refmem", "fla"} or Layout
    dtype : {"float64", "float32"}
        The dtype of the inputs and cotangents; gradients are compared with the
        float64 reference under that dtype's tolerance of each gradient.
    convert : callable, optional
        Applied to every NumPy input (and cotangent) first, as in :func:`refmem.conform.check`.
    vjp : callable, optional
        The kernel's backward (module docstring). Without it, torch autograd
        through ``fn`` (torch is imported only then).
    cases : str or iterable of str, optional
        Only these case names.
    name : str, optional
        How the result names the implementation.
    state_v_first, gate_space, value_heads_per_qk, cu_seqlens, use_qk_l2norm_in_kernel, scale
        The layout options of :func:`refmem.conform.check`; each maps the
        gradients by the chain rule (module docstring). A case an option
        cannot express is skipped with the reason.

    Returns
    -------
    ConformResult
        Rows named by gradient (``dq``, ``dbeta``, ``dh0``, ...); its summary
        names every gradient that differs.

    Raises
    ------
    TypeError, ValueError
        Bad arguments, named; ``NoGradientsError`` (a ``ValueError``) for a spec
        without a backward pass or vectors without gradients; ``ImportError``
        (as a ``ValueError``) when the torch-autograd route is asked for and
        torch is not installed.
    VectorError
        The vectors fail an integrity check.

    Examples
    --------
    refmem's own delta-rule VJP, in the refmem layout, passes:

    >>> from refmem.backward.delta_rule import delta_rule_vjp
    >>> from refmem.memories.delta_rule import delta_rule_recurrent
    >>> res = check_backward(delta_rule_recurrent, spec="delta_rule", vjp=delta_rule_vjp, cases=["T1", "initial_state"])
    >>> res.passed, sorted({r.output for r in res.rows})
    (True, ['dbeta', 'dinitial_state', 'dk', 'dq', 'dv'])
    """
    _check_arguments(fn, spec, vectors, layout, dtype, convert, name)
    lay = layout_from(layout, dict(state_v_first=state_v_first, gate_space=gate_space,
                                   value_heads_per_qk=value_heads_per_qk, cu_seqlens=cu_seqlens,
                                   use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, scale=scale))
    if vjp is not None and not callable(vjp):
        raise TypeError(f"vjp must be callable or None; got {type(vjp).__name__}")
    if vjp is None:
        try:
            import torch  # noqa: F401  (only for the autograd route)
        except ImportError:
            raise ValueError("without a vjp the gradients come from torch autograd, and torch is not installed "
                             "(pip install torch, or pass vjp / --vjp MODULE:FUNCTION)") from None
    cases = _names(cases, "cases")
    target = name or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
    loaded = _load_with_gradients(spec, vectors, cases)
    result = ConformResult(target, spec, lay.describe(), dtype, noun="gradient")
    # the vjp gets NumPy arrays through convert like the kernel; the autograd route makes its own leaves
    cast = _Cast(dtype, convert if vjp is not None else None)
    accepts = _accepts(fn)
    for case in loaded:
        if not case.gradients:
            result.skipped.append((case.name, f"no gradients in the vectors ({case.meta['backward']['skipped']})"))
            continue
        try:
            call = build_call(case, lay, cast, accepts)  # the forward check's own call(s)
            want = expected_gradients(case, lay, dtype)
            cots = [{n: cast(c) for n, c in cot.items()} for cot in cotangents_per_call(case, lay)]
        except NotApplicable as exc:
            result.skipped.append((case.name, str(exc)))
            continue
        tol_call = min(t for _, t in want.values())
        n_states = len([n for n in case.outputs if n != "o"])
        try:
            if vjp is not None:
                parts = [_from_vjp(vjp, inv, cot, lay.name) for inv, cot in zip(call.invocations, cots)]
            else:
                parts = [_from_autograd(fn, inv, convert, cot, lay.name, n_states)
                         for inv, cot in zip(call.invocations, cots)]
        except (VectorError, ConvertError):
            raise
        except (Exception, SystemExit) as exc:  # the kernel's backward crashed on this case: a failing row
            result.rows.append(Row(case.name, "(backward)", math.nan, math.nan, math.nan, tol_call, False,
                                   f"raised {type(exc).__name__}: {exc}"))
            continue
        got = merge_gradients(parts, lay, case.inputs)
        for n, (ref, tol) in want.items():
            if n not in got:
                result.rows.append(Row(case.name, n, math.nan, math.nan, math.nan, tol, False,
                                       f"not returned (returned: {', '.join(sorted(got)) or 'nothing'})"))
            elif isinstance(got[n], _Misshapen):
                result.rows.append(Row(case.name, n, math.nan, math.nan, math.nan, tol, False, got[n].detail))
            else:
                result.rows.append(compare(got[n], ref, tol, case.name, n))
    return result


def assert_backward_conforms(fn: Callable, **kwargs) -> ConformResult:
    """:func:`check_backward`, raising ``AssertionError`` with the table and verdict when any gradient differs."""
    return passed_or_raise(check_backward(fn, **kwargs))


# ---------------------------------------------------------------- command line


def main(args) -> int:
    """``refmem conform ... --backward``: the forward check, then the gradients; exit 0 pass, 1 differ, 2 usage error."""
    from .conform import check, report_for_cli

    def run():
        fn = resolve(args.target, "MODULE:FUNCTION")
        convert = resolve(args.convert, "--convert") if args.convert else None
        vjp = resolve(args.vjp, "--vjp") if args.vjp else None
        if vjp is None and not _torch_installed():
            raise ValueError("--backward without --vjp takes the gradients from torch autograd, and torch is not "
                             "installed (pip install torch, or pass --vjp MODULE:FUNCTION)")
        _has_backward(args.spec)
        options = dict(state_v_first=args.state_v_first, gate_space=args.gate_space,
                       value_heads_per_qk=args.value_heads_per_qk, cu_seqlens=args.cu_seqlens,
                       use_qk_l2norm_in_kernel=args.use_qk_l2norm_in_kernel, scale=args.scale)
        with tempfile.TemporaryDirectory(prefix="refmem-vectors-") as tmp:
            vectors = args.vectors
            if vectors is None:  # generated once for both checks
                generate(tmp, [args.spec])
                vectors = tmp
            forward = check(fn, spec=args.spec, vectors=vectors, layout=args.layout, dtype=args.dtype,
                            convert=convert, outputs=args.outputs, name=args.target, **options)
            backward = check_backward(fn, spec=args.spec, vectors=vectors, layout=args.layout, dtype=args.dtype,
                                      convert=convert, vjp=vjp, name=args.target, **options)
        return [forward, backward]

    return report_for_cli(args, run)


def _torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _has_backward(spec: str) -> None:
    mem = registry().get(spec)
    if mem is not None and getattr(mem, "backward", None) is None:
        _load_with_gradients(spec, None, None)  # raises NoGradientsError naming the specs that have one
