"""``refmem verify`` checks of Titans: two levels per step (momentum, then memory), linear and deep memory.

The scan's step == solving the momentum level (value: the surprise at
``M_{t-1}``) then the memory level (value: the new momentum), in closed form
and iteratively; with ``eta = 0, alpha = 0`` Titans is the delta rule with
``b = theta`` (linear memory) and the deep memory's gradient-descent scan with
step ``theta`` (deep memory). Tolerances: :mod:`refmem.checks.scan_steps`.
"""

from __future__ import annotations

from ..level import solve
from ..memories import MEMORIES
from ..metrics import rel_error
from ..problems import rng, to_backend
from .registry import register_check
from .scan_steps import CLOSED_VS_ITERATIVE_TOL, SHAPE, memory_inputs, rounding_tol, slice_step

def titans_step_errors(xp, *, seed: int = 0, shape=None, inputs=None):
    """Largest relative errors over a scan of Titans: (scan step vs the two closed solves, closed vs iterative).

    Each step solves the momentum level (value = the surprise at ``M_{t-1}``), then
    the memory level (value = the new momentum), from a random ``(M_0, S_0)``.
    """
    from ..memories.titans import surprise, titans_levels

    spec = MEMORIES["titans"]
    shape = dict(SHAPE, **(shape or {}))
    if inputs is None:
        inputs = spec.make_inputs(seed, shape["batch"], shape["T"], shape["d_k"], shape["d_v"], xp)
    k, v = inputs["k"], inputs["v"]
    g = rng(seed + 1)
    state_shape = tuple(k.shape[:-2]) + (v.shape[-1], k.shape[-1])
    M, S = to_backend(g.standard_normal(state_shape), xp), to_backend(g.standard_normal(state_shape), xp)
    e_scan = e_iter = 0.0
    for t in range(k.shape[-2]):
        _, M_next, S_next = spec.recurrent(**slice_step(inputs, spec.gates, t), initial_state=M,
                                           initial_momentum=S, return_momentum=True)
        mom, mem = titans_levels(inputs["alpha"][..., t], inputs["eta"][..., t], inputs["theta"][..., t])
        u = surprise(M, k[..., t, :], v[..., t, :])
        S_closed, _ = solve(mom, S, None, u, method="closed")
        S_iter, _ = solve(mom, S, None, u, method="iterative")
        M_closed, _ = solve(mem, M, None, S_closed, method="closed")
        M_iter, _ = solve(mem, M, None, S_closed, method="iterative")
        e_scan = max(e_scan, rel_error(S_next, S_closed, xp), rel_error(M_next, M_closed, xp))
        e_iter = max(e_iter, rel_error(S_iter, S_closed, xp), rel_error(M_iter, M_closed, xp))
        M, S = M_next, S_next
    return e_scan, e_iter


@register_check("titans", "scan step == solve(momentum level) then solve(memory level), closed")
def _titans_scan_vs_closed(xp):
    return titans_step_errors(xp)[0], rounding_tol(xp, xp.float64, SHAPE["d_k"])


@register_check("titans", "both levels closed == iterative", CLOSED_VS_ITERATIVE_TOL)
def _titans_closed_vs_iterative(xp):
    return titans_step_errors(xp)[1]


@register_check("titans", "eta = 0, alpha = 0 (no momentum, no forgetting) == delta rule with b = theta")
def _titans_is_delta(xp):
    from ..memories.delta_rule import delta_rule_recurrent
    from ..memories.titans import titans_recurrent

    inputs = MEMORIES["titans"].make_inputs(51, (2,), 8, 4, 3, xp)
    zeros = xp.zeros_like(inputs["alpha"])
    M0 = to_backend(rng(52).standard_normal((2, 3, 4)), xp)
    o1, M1 = titans_recurrent(inputs["q"], inputs["k"], inputs["v"], zeros, zeros, inputs["theta"],
                                     initial_state=M0)
    o2, M2 = delta_rule_recurrent(inputs["q"], inputs["k"], inputs["v"], inputs["theta"], initial_state=M0)
    return max(rel_error(o1, o2, xp), rel_error(M1, M2, xp)), rounding_tol(xp, xp.float64, 4) * 8


# --- Titans on the deep memory

@register_check("titans", "deep memory: scan with both levels closed == both iterative (CG)", CLOSED_VS_ITERATIVE_TOL)
def _titans_deep_closed_vs_iterative(xp):
    from ..memories.titans_deep import titans_deep_recurrent

    inp = memory_inputs("titans", xp, seed=1, T=3, d_k=3, d_v=3)
    o, W, S = titans_deep_recurrent(**inp, return_momentum=True)
    o_it, W_it, S_it = titans_deep_recurrent(**inp, return_momentum=True, method="iterative")
    return max(rel_error(o_it, o, xp), *(rel_error(a, b, xp) for a, b in zip(W_it + S_it, W + S)))


@register_check("titans", "deep memory: eta = 0, alpha = 0 == the deep memory's GD scan with step theta")
def _titans_deep_is_gd(xp):
    from ..memories.deep_memory import deep_memory_recurrent
    from ..memories.titans_deep import titans_deep_recurrent

    inp = memory_inputs("titans", xp, seed=2, T=4, d_k=3, d_v=3)
    zero = xp.zeros_like(inp["alpha"])
    o, W = titans_deep_recurrent(inp["q"], inp["k"], inp["v"], zero, zero, inp["theta"], loss="huber")
    o_gd, W_gd = deep_memory_recurrent(inp["q"], inp["k"], inp["v"], inp["theta"], loss="huber")
    # S = 0 * S - theta g and W = 1 * W + S: the same products as W - theta g, up to the added zeros
    return max(rel_error(o, o_gd, xp), rel_error(W[0], W_gd[0], xp), rel_error(W[1], W_gd[1], xp)), \
        rounding_tol(xp, xp.float64, 3)
