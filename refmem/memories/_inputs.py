"""Validation and random inputs shared by the sequence memories."""

from __future__ import annotations

import numpy as np  # randomness only: arrays are drawn in NumPy and moved to xp

from ..validation import as_param, check_arrays, check_ndim, require


def check_sequence(q, k, v, initial_state=None, *, optional=(), **gates):
    """Check ``q, k [..., T, d_k]``, ``v [..., T, d_v]``, gates ``[..., T]`` or ``[..., T, d]``, state ``[..., d_v, d_k]``.

    Returns ``xp``. ``q, k, v`` and every gate not named in ``optional`` are
    required (``None`` is a ``TypeError`` naming it). Every axis must be
    non-empty (``T >= 1``, ``d_k, d_v >= 1``, no empty batch axis). Gates are
    only checked for shape/dtype/finiteness here; their ranges are checked by
    the memory with :func:`check_step_gate` (it knows what its gates mean).
    """
    require(q=q, k=k, v=v, **{n: g for n, g in gates.items() if n not in optional})
    arrays = dict(q=q, k=k, v=v, initial_state=initial_state, **{n: g for n, g in gates.items()})
    xp = check_arrays(**arrays)
    check_ndim(q, "q", 2, "[..., T, d_k]")
    check_ndim(k, "k", 2, "[..., T, d_k]")
    check_ndim(v, "v", 2, "[..., T, d_v]")
    if tuple(q.shape) != tuple(k.shape):
        raise ValueError(f"q and k must have the same shape [..., T, d_k]; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if tuple(v.shape[:-1]) != tuple(k.shape[:-1]):
        raise ValueError(f"v must be [..., T, d_v] with the same leading dims as k {tuple(k.shape[:-1])}; got {tuple(v.shape)}")
    if k.shape[-2] == 0:
        raise ValueError(f"q, k, v must hold at least one step (T >= 1); got k of shape {tuple(k.shape)}")
    if k.shape[-1] == 0:
        raise ValueError(f"k and q must have a key dimension d_k >= 1; got k of shape {tuple(k.shape)}")
    if v.shape[-1] == 0:
        raise ValueError(f"v must have a value dimension d_v >= 1; got v of shape {tuple(v.shape)}")
    if 0 in tuple(k.shape[:-2]):
        raise ValueError(f"q, k, v must not have an empty batch axis; got k of shape {tuple(k.shape)}")
    lead = tuple(k.shape[:-1])  # (..., T)
    for n, g in gates.items():
        if g is None:
            continue
        if tuple(g.shape) != lead and tuple(g.shape[:-1]) != lead:
            raise ValueError(f"{n} must have shape {lead} (one gate per step) or {lead} + (d,) (per channel); got {tuple(g.shape)}")
    if initial_state is not None:
        want = tuple(k.shape[:-2]) + (v.shape[-1], k.shape[-1])
        if tuple(initial_state.shape) != want:
            raise ValueError(f"initial_state must have shape [..., d_v, d_k] = {want}; got {tuple(initial_state.shape)}")
    return xp


def check_gate_range(g, name, xp, *, low=0.0, high=1.0, low_open=False, high_open=False):
    """Range-check a gate array (``[0, 1]`` by default)."""
    if g is not None:
        as_param(g, name, xp, g.dtype, low=low, high=high, low_open=low_open, high_open=high_open)


def check_step_gate(g, name, k, xp, *, low=0.0, high=1.0, low_open=False, high_open=False, channels=None,
                    channel_name="channel"):
    """The per-step gate check shared by every memory: shape ``[..., T]`` (or ``[..., T, channels]``) and range.

    ``low`` / ``high`` bound the entries (``[0, 1]`` by default, a forget
    gate; ``high=None`` for a step size ``>= 0``). With ``channels`` the gate
    may also hold one value per step and channel (``channel_name`` says which:
    key or value). Returns whether the gate is per channel. A ``None`` gate is
    skipped (optional gates).
    """
    if g is None:
        return False
    lead = tuple(k.shape[:-1])  # (..., T)
    allowed = (lead,) if channels is None else (lead, lead + (channels,))
    if tuple(g.shape) not in allowed:
        per_channel = "" if channels is None else f" or {lead + (channels,)} (one per step and {channel_name})"
        raise ValueError(f"{name} must have shape {lead} (one per step){per_channel}; got {tuple(g.shape)}")
    check_gate_range(g, name, xp, low=low, high=high, low_open=low_open, high_open=high_open)
    return tuple(g.shape) != lead


def check_forget_and_step(alpha, eta, k, xp) -> None:
    """A forget gate ``alpha [..., T]`` in ``[0, 1]`` and step sizes ``eta [..., T] > 0`` (the Miras memories)."""
    check_step_gate(alpha, "alpha", k, xp)
    check_step_gate(eta, "eta", k, xp, low=0.0, low_open=True, high=None)


def check_value_channel_steps(beta, k, v, xp) -> bool:
    """Check step sizes ``beta`` of shape ``[..., T]`` or ``[..., T, d_v]`` (per value channel), ``>= 0``.

    Returns whether ``beta`` is per channel (Longhorn, DGD).
    """
    return check_step_gate(beta, "beta", k, xp, low=0.0, high=None, channels=v.shape[-1],
                           channel_name="value channel")


def initial(initial_state, k, v, xp):
    """The starting state: ``initial_state`` or zeros ``[..., d_v, d_k]``."""
    if initial_state is not None:
        return initial_state
    shape = tuple(k.shape[:-2]) + (v.shape[-1], k.shape[-1])
    return xp.zeros(shape, dtype=k.dtype, device=_device(k))


def _device(x):
    import array_api_compat

    return array_api_compat.device(x)


def random_qkv(seed, batch, T, d_k, d_v, xp, dtype="float64", *, unit_keys=False):
    """Random ``q, k, v`` with keys of norm about 1 (exactly 1 when ``unit_keys``)."""
    g = np.random.default_rng(seed)
    batch = tuple(batch)
    q = g.standard_normal(batch + (T, d_k)) / np.sqrt(d_k)
    k = g.standard_normal(batch + (T, d_k)) / np.sqrt(d_k)
    if unit_keys:
        k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    v = g.standard_normal(batch + (T, d_v))
    conv = lambda a: xp.asarray(np.asarray(a, dtype=dtype))  # noqa: E731
    return g, {"q": conv(q), "k": conv(k), "v": conv(v)}, conv


def random_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64", **gate_ranges):
    """:func:`random_qkv` and each gate drawn uniformly in its range, in the order given.

    ``gate_ranges`` maps a gate's name to ``(low, high)`` (one value per step,
    ``[..., T]``) or ``(low, high, trailing)`` (``[..., T, *trailing]``).
    """
    g, inputs, conv = random_qkv(seed, batch, T, d_k, d_v, xp, dtype)
    for name, (low, high, *trailing) in gate_ranges.items():
        shape = tuple(batch) + (T,) + tuple(trailing[0] if trailing else ())
        inputs[name] = conv(g.uniform(low, high, size=shape))
    return inputs
