"""``refmem verify`` checks for the core levels: every (objective, retention, step) of MATH.md 1-4
that the core defines, closed form against iterative solvers, and the stability facts of MATH.md 3."""

from __future__ import annotations

import math

from ..level import Level, solve
from ..linalg import matvec, sq_norm
from ..metrics import rel_error
from ..objectives import L2, Dot, Inner
from ..problems import level_problem, to_backend
from ..retentions import ForgetGate, LocalL2
from .registry import register_check

CORE_OBJECTIVES = {"dot": Dot, "inner": Inner, "l2": L2}
CORE_RETENTIONS = {"local_l2": lambda: LocalL2(eta=0.7), "forget_gate": lambda: ForgetGate(eta=0.7, alpha=0.85)}
# float64 closed vs iterative: the solvers stop at relative optimality 1e-12 and these
# problems have condition number <= 1 + eta ||k||^2 < 10, so 1e-10 leaves a factor 10 margin.
CLOSED_VS_ITERATIVE_TOL = 1e-10


def _levels():
    for oname, obj in CORE_OBJECTIVES.items():
        for rname, ret in CORE_RETENTIONS.items():
            for step in ("explicit", "implicit"):
                yield oname, Level(obj(), ret(), step)
            if oname == "l2" and rname == "forget_gate":
                yield oname, Level(obj(), ret(), "explicit", linearize_at="retained")


def _register_closed_vs_iterative(oname, level, solver):
    where = "" if level.linearize_at == "state" else " at retained state"
    name = f"{level.retention.name}/{level.step}{where}: closed == {solver}"

    @register_check(oname, name, CLOSED_VS_ITERATIVE_TOL)
    def check(xp, level=level, solver=solver):
        M_t, k, v = level_problem(7, batch=(4,), d_v=5, d_k=6, key_scale=1.5, xp=xp,
                                  keyless=level.objective.keyless)
        closed, _ = solve(level, M_t, k, v, method="closed")
        it, _ = solve(level, M_t, k, v, method="iterative", solver=solver)
        return rel_error(it, closed, xp)


for _oname, _level in _levels():
    for _solver in ("cg", "gd"):
        _register_closed_vs_iterative(_oname, _level, _solver)


@register_check("l2", "local_l2/implicit: closed == scipy L-BFGS (NumPy)")
def _l2_vs_lbfgs(xp):
    # NumPy-only witness; L-BFGS stops at relative gradient ~1e-12..1e-11 (measured),
    # times condition number 1 + eta||k||^2 < 10: 1e-9 bounds the error it can leave.
    import array_api_compat.numpy as npx

    from ..scipy_crosscheck import lbfgs_solve

    level = Level(L2(), LocalL2(eta=0.7), "implicit")
    M_t, k, v = level_problem(11, batch=(3,), d_v=4, d_k=5, key_scale=1.5, xp=npx)
    closed, _ = solve(level, M_t, k, v)
    lb, _ = lbfgs_solve(level, M_t, k, v)
    return rel_error(npx.asarray(lb), closed, npx), 1e-9


def _residual_factor(step_kind, eta, key_norm, xp, steps=30):
    """Measured per-step factor of ||M k - v|| when the same (k, v) is written ``steps`` times."""
    level = Level(L2(), LocalL2(eta=eta), step_kind)
    M, k, v = level_problem(3, d_v=3, d_k=4, xp=xp)
    k = k * (key_norm / xp.sqrt(sq_norm(k, xp)))
    r_first = math.sqrt(float(sq_norm(matvec(M, k) - v, xp)))
    for _ in range(steps):
        M, _ = solve(level, M, k, v)
    r_last = math.sqrt(float(sq_norm(matvec(M, k) - v, xp)))
    return (r_last / r_first) ** (1.0 / steps)


@register_check("l2", "implicit step contracts: factor == 1/(1+eta||k||^2) for eta||k||^2 in [0.1, 1e4]")
def _implicit_contracts(xp):
    worst = 0.0
    for eta_k2 in (0.1, 1.0, 2.5, 10.0, 1e4):
        # one step: at eta||k||^2 = 1e4 the residual drops 1e4-fold, so more steps would hit rounding
        factor = _residual_factor("implicit", eta_k2 / 4.0, 2.0, xp, steps=1)
        if not factor < 1.0:
            raise AssertionError(f"implicit step did not contract at eta||k||^2 = {eta_k2}: factor {factor}")
        worst = max(worst, abs(factor - 1.0 / (1.0 + eta_k2)) / (1.0 / (1.0 + eta_k2)))
    # a ratio of norms of size >= 1e-4: rounding ~ eps / 1e-4 ~ 2e-12 relative; 1e-9 is ample
    return worst, 1e-9


@register_check("l2", "explicit step diverges iff eta||k||^2 > 2: factor == |1 - eta||k||^2|")
def _explicit_diverges(xp):
    worst = 0.0
    for eta_k2 in (0.5, 1.5, 2.5, 3.0):
        factor = _residual_factor("explicit", eta_k2 / 4.0, 2.0, xp, steps=5)
        if (factor > 1.0) != (eta_k2 > 2.0):
            raise AssertionError(f"explicit step at eta||k||^2 = {eta_k2}: factor {factor}")
        worst = max(worst, abs(factor - abs(1.0 - eta_k2)) / abs(1.0 - eta_k2))
    # 5th root of a norm ratio >= 0.5^5: rounding ~ eps / 0.5^5 / 5 ~ 1e-15 relative; 1e-9 is ample
    return worst, 1e-9


@register_check("backends", "dtype and array type preserved (float32 in, float32 out)", 0.0)
def _dtype_preserved(xp):
    level = Level(L2(), ForgetGate(eta=0.5, alpha=0.9), "implicit")
    M_t, k, v = level_problem(5, batch=(2,), xp=xp, dtype="float32")
    M, _ = solve(level, M_t, k, v)
    if M.dtype != M_t.dtype or type(M) is not type(M_t):
        raise AssertionError(f"got {type(M).__name__} {M.dtype} for {type(M_t).__name__} {M_t.dtype}")
    return 0.0


__all__ = ["to_backend"]
