"""What every memory with a stated step level is checked for: the scan's step is the solved level (MATH.md 5).

Per memory (read off :data:`refmem.memories.MEMORIES`): the scan's step (the
recurrent function run for one token from a given state) ==
``solve(step_level(...), method="closed")`` == ``solve(..., method="iterative")``.
:func:`register_step_checks` registers that pair of checks for one memory; the
family modules (:mod:`refmem.checks.delta_family`, :mod:`refmem.checks.omega`,
:mod:`refmem.checks.miras`) call it and add their identities.

Tolerances (float64 unless the backend's dtype says otherwise):

- closed vs iterative: :data:`CLOSED_VS_ITERATIVE_TOL` = 1e-10 relative (the
  solvers stop at relative optimality 1e-12; these steps have condition
  number ``<= 1 + eta ||k||^2 < 10``);
- two algebraically equal expressions (scan vs closed form, identities):
  :func:`rounding_tol` ``= 64 d eps`` relative, ``d`` the longest inner
  product (each entry is a sum of ``O(d)`` products of O(1) numbers, so the
  two roundings differ by at most ``~2 d eps`` per step; 64 covers ``T <= 16``
  steps of accumulation with margin).
"""

from __future__ import annotations

from ..level import solve
from ..memories import MEMORIES
from ..metrics import rel_error
from ..problems import rng, to_backend
from .registry import register_check

CLOSED_VS_ITERATIVE_TOL = 1e-10
SHAPE = dict(batch=(2,), T=6, d_k=4, d_v=3)  # per-step checks
SCAN_SHAPE = dict(batch=(2,), T=8, d_k=4, d_v=3)  # whole-scan checks (memory_inputs)


def rounding_tol(xp, dtype, d: int) -> float:
    """Tolerance for two algebraically equal float computations with inner products of length ``d``."""
    return 64 * d * float(xp.finfo(dtype).eps)


def gate_at(g, k, t: int):
    """Gate ``g`` at step ``t``: ``g[..., t]`` (one per step) or ``g[..., t, :]`` (per channel)."""
    return g[..., t] if tuple(g.shape) == tuple(k.shape[:-1]) else g[..., t, :]


def is_per_channel(g, k) -> bool:
    return tuple(g.shape) != tuple(k.shape[:-1])


def slice_step(inputs: dict, gates: tuple, t: int) -> dict:
    """The inputs of token ``t`` alone, as a length-1 sequence (gates sliced along their step axis)."""
    k = inputs["k"]
    out = {n: inputs[n][..., t:t + 1, :] for n in ("q", "k", "v")}
    for n in gates:
        g = inputs[n]
        out[n] = g[..., t:t + 1] if not is_per_channel(g, k) else g[..., t:t + 1, :]
    return out


def step_problem(spec, inputs, t, M_prev):
    """``(level, keys, values)`` that step ``t`` of memory ``spec`` solves from ``M_prev``, read off the registry.

    The level is ``spec.step_level(**gates at t)``; it is applied to ``(k_t, v_t)``,
    or to ``(k_t, spec.step_value(M_prev, k_t, v_t))`` when the memory fits another
    value (DGD), or to the window of the last ``c`` tokens when ``spec.windowed``
    (Omega: keys ``[..., c, d_k]`` and values ``[..., c, d_v]``, absent tokens as zero rows).
    """
    k, v = inputs["k"], inputs["v"]
    gates = {}
    per_channel = False
    for n in spec.gates:
        g = inputs[n]
        if g.ndim < k.ndim - 1:  # a gate shared by all steps (Omega's gamma [c])
            gates[n] = g
            continue
        gates[n] = gate_at(g, k, t)
        per_channel = per_channel or (is_per_channel(g, k) and not spec.windowed)
    level = spec.step_level(**gates, per_channel=True) if per_channel else spec.step_level(**gates)
    if spec.windowed:
        from ..backends import namespace_of
        from ..memories.omega import _windows

        c = inputs["gamma"].shape[-1]
        xp = namespace_of(k)
        return level, _windows(k, c, xp)[..., t:t + c, :], _windows(v, c, xp)[..., t:t + c, :]  # (.., c, d)
    k_t, v_t = k[..., t, :], v[..., t, :]  # (.., d_k), (.., d_v)
    if spec.step_value is not None:
        v_t = spec.step_value(M_prev, k_t, v_t)
    return level, k_t, v_t


def prefix(inputs: dict, gates: tuple, t: int) -> dict:
    """The inputs of tokens ``0 .. t - 1`` (gates of shape ``[c]``, shared by all steps, kept whole)."""
    k = inputs["k"]
    out = {n: inputs[n][..., :t, :] for n in ("q", "k", "v")}
    for n in gates:
        g = inputs[n]
        if g.ndim < k.ndim - 1:  # a gate shared by all steps (Omega's gamma [c])
            out[n] = g
        else:
            out[n] = g[..., :t] if not is_per_channel(g, k) else g[..., :t, :]
    return out



def step_errors(name: str, xp, *, seed: int = 0, inputs=None, shape=None):
    """Largest relative errors over a scan: (scan step vs closed, closed vs iterative).

    Starts from a random state, so the first step is as informative as the others.
    The scan's step is the recurrent function run for token ``t`` alone from
    ``M_{t-1}``, or (windowed memories) the scan of tokens ``0..t`` from ``M_0``.
    """
    spec = MEMORIES[name]
    shape = dict(SHAPE, **(shape or {}))
    if inputs is None:
        inputs = spec.make_inputs(seed, shape["batch"], shape["T"], shape["d_k"], shape["d_v"], xp)
    k, v = inputs["k"], inputs["v"]
    M0 = to_backend(rng(seed + 1).standard_normal(tuple(k.shape[:-2]) + (v.shape[-1], k.shape[-1])), xp)
    M = M0
    e_scan = e_iter = 0.0
    for t in range(k.shape[-2]):
        if spec.windowed:  # the step depends on earlier tokens: the scan of the prefix
            _, M_next = spec.recurrent(**prefix(inputs, spec.gates, t + 1), initial_state=M0)
        else:
            _, M_next = spec.recurrent(**slice_step(inputs, spec.gates, t), initial_state=M)
        level, k_t, v_t = step_problem(spec, inputs, t, M)
        M_closed, _ = solve(level, M, k_t, v_t, method="closed")
        M_iter, _ = solve(level, M, k_t, v_t, method="iterative")
        e_scan = max(e_scan, rel_error(M_next, M_closed, xp))
        e_iter = max(e_iter, rel_error(M_iter, M_closed, xp))
        M = M_next
    return e_scan, e_iter


def register_step_checks(name: str, d: int, *, label: str = "", make=None):
    """Register the two per-step checks of memory ``name`` (``make(xp)`` gives other inputs than its make_inputs)."""
    suffix = f" ({label})" if label else ""

    def errors(xp):
        return step_errors(name, xp, inputs=None if make is None else make(xp))

    @register_check(name, "scan step == solve(step_level, closed)" + suffix)
    def _scan_vs_closed(xp):
        return errors(xp)[0], rounding_tol(xp, xp.float64, d)

    @register_check(name, "step closed == iterative" + suffix, CLOSED_VS_ITERATIVE_TOL)
    def _closed_vs_iterative(xp):
        return errors(xp)[1]


def memory_inputs(name, xp, seed=0, **shape):
    """``MEMORIES[name].make_inputs`` in float64 at :data:`SCAN_SHAPE` (overridden by ``shape``)."""
    s = dict(SCAN_SHAPE, **shape)
    return MEMORIES[name].make_inputs(seed, s["batch"], s["T"], s["d_k"], s["d_v"], xp, "float64")


_STEP_ERRORS: dict = {}


def cached_step_errors(name, xp, **shape):
    """:func:`step_errors` once per (memory, backend): two checks read its two numbers."""
    key = (name, getattr(xp, "__name__", repr(xp)))
    if key not in _STEP_ERRORS:
        _STEP_ERRORS[key] = step_errors(name, xp, shape=shape or None)
    return _STEP_ERRORS[key]
