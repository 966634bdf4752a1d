"""``refmem verify`` checks of Mesa: the whole context's regularised least squares (MATH.md 5).

The closed form (running sums + linear solve) == conjugate gradient on the
stated objective, per-step or per-channel regulariser; scanning in two parts
from the sufficient statistics == one scan. Closed vs iterative: the error in
the solution is at most ``rtol kappa`` relative with
``kappa <= (sum ||k_i||^2 + lam_max)/lam_min < 40`` here (checked and returned
as the bound ``max(1e-10, 4 rtol kappa)``, refused past ``sqrt(eps)``).
"""

from __future__ import annotations

from ..memories.mesa import make_initial_state as mesa_stats
from ..memories.mesa import mesa_iterative, mesa_objective, mesa_recurrent
from ..metrics import rel_error
from ..problems import rng, to_backend
from ..solvers import default_rtol
from ..solvers.problem import rtol_ceiling
from .registry import register_check
from .scan_steps import CLOSED_VS_ITERATIVE_TOL, SCAN_SHAPE, memory_inputs

def _mesa_bound(inp, xp):
    """``max(1e-10, 4 rtol kappa)``, refused (ValueError) past the ceiling ``sqrt(eps)``: a bound looser than
    that would pass a comparison with fewer than half the digits right (``default_rtol`` refuses a ``kappa``
    whose own tolerance would pass the ceiling)."""
    _, kappa = mesa_objective(inp["q"], inp["k"], inp["v"], inp["lam"], initial_state=inp.get("initial_state"))
    dtype = inp["k"].dtype
    bound = max(CLOSED_VS_ITERATIVE_TOL, 4 * default_rtol(dtype, xp, condition=kappa) * kappa)
    if bound > rtol_ceiling(dtype, xp):
        raise ValueError(f"condition kappa = {kappa:.3e} makes the closed-vs-iterative bound 4 rtol kappa = "
                         f"{bound:.1e}, past the ceiling sqrt(eps) = {rtol_ceiling(dtype, xp):.1e}: "
                         "these inputs are too ill-conditioned to compare (raise lam)")
    return bound


def closed_vs_cg(inp, xp):
    """``(error, bound)``: the closed form (running sums + solve) against conjugate gradient, outputs and state."""
    o, M = mesa_recurrent(**inp)
    o_it, M_it, _ = mesa_iterative(**inp)
    return max(rel_error(o_it, o, xp), rel_error(M_it, M, xp)), _mesa_bound(inp, xp)


@register_check("mesa", "closed (linear solve) == conjugate gradient, per-step lam")
def _mesa_solve_vs_cg(xp):
    return closed_vs_cg(memory_inputs("mesa", xp), xp)


@register_check("mesa", "closed == conjugate gradient, per-channel lam and initial statistics")
def _mesa_channel_vs_cg(xp):
    inp = memory_inputs("mesa", xp, seed=1)
    g = rng(5)
    inp["lam"] = to_backend(g.uniform(0.3, 1.5, size=tuple(inp["k"].shape)), xp)  # (.., T, d_k)
    inp["initial_state"] = mesa_stats(6, SCAN_SHAPE["batch"], SCAN_SHAPE["d_k"], SCAN_SHAPE["d_v"], xp)
    return closed_vs_cg(inp, xp)


@register_check("mesa", "scan of x[:s] then x[s:] from its statistics == scan of x")
def _mesa_split(xp):
    inp = memory_inputs("mesa", xp, seed=2)
    s = 3
    first = {n: a[..., :s, :] if a.ndim == 3 else a[..., :s] for n, a in inp.items()}
    rest = {n: a[..., s:, :] if a.ndim == 3 else a[..., s:] for n, a in inp.items()}
    o, M = mesa_recurrent(**inp)
    o1, _, stats = mesa_recurrent(**first, return_stats=True)
    o2, M2 = mesa_recurrent(**rest, initial_state=stats)
    err = max(rel_error(xp.concat([o1, o2], axis=-2), o, xp), rel_error(M2, M, xp))
    return err, 64 * SCAN_SHAPE["T"] * SCAN_SHAPE["d_k"] * float(xp.finfo(xp.float64).eps)


# ------------------------------------------------------------
