"""``refmem verify`` checks for the Miras objectives (lp, Huber) and retentions (weight decay, elastic net,
KL on a scaled simplex, Moneta's lq rule): closed forms against iterative solvers that minimise the stated
objective, and the MATH.md 3-4 "checked" formulas, evaluated as printed, against a generic minimiser.

Tolerances: the iterative solvers stop at relative optimality 1e-12; the problems here have condition
numbers below ~10 (key scale 1, eta <= 1), so 1e-10 (MATH.md's default) leaves a margin of 10. Where a
problem has no closed form the check returns the violation of its optimality (KKT) conditions instead.
"""

from __future__ import annotations

from ..level import Level, problem, solve
from ..linalg import matvec, outer, sq_norm, sign
from ..metrics import max_abs_error, rel_error
from ..objectives import L2, Huber, Lp
from ..problems import level_problem, rng, to_backend
from ..retentions import ElasticNet, ForgetGate, KLSimplex, LocalL2, LqMoneta, WeightDecay
from ..retentions.lq_moneta import lq_link, lq_mirror
from .registry import register_check

TOL = 1e-10


def _data(xp, seed=5, batch=(4,), d_v=3, d_k=4):
    return level_problem(seed, batch=batch, d_v=d_v, d_k=d_k, key_scale=1.0, xp=xp)


def _simplex(xp, c, seed=5, batch=(4,), d_v=3, d_k=4):
    P = rng(seed).uniform(0.1, 1.0, size=tuple(batch) + (d_v, d_k))
    return to_backend(c * P / P.sum(-1, keepdims=True), xp)


def _closed_vs_iterative(level, M_t, k, v, solver=None):
    closed, _ = solve(level, M_t, k, v)
    it, _ = solve(level, M_t, k, v, method="iterative", solver=solver)
    import array_api_compat

    return rel_error(it, closed, array_api_compat.array_namespace(closed))


# ---------------------------------------------------------------- lp


def _register_lp(p, ret_name, make_ret):
    @register_check("lp", f"p={p:g} {ret_name}/implicit: closed == iterative", TOL)
    def check(xp):
        M_t, k, v = _data(xp)
        return _closed_vs_iterative(Level(Lp(p), make_ret(), "implicit"), M_t, k, v)


for _p in (1.0, 1.5, 2.0, 3.0, 4.5):
    _register_lp(_p, "local_l2", lambda: LocalL2(0.8))
_register_lp(1.0, "forget_gate", lambda: ForgetGate(0.8, 0.9))
_register_lp(3.0, "forget_gate", lambda: ForgetGate(0.8, 0.9))


@register_check("lp", "MATH.md 3 p=1 row as printed == generic minimiser (residual dual)", TOL)
def _lp1_printed(xp):
    M_t, k, v = _data(xp)
    eta = 0.8
    r0 = matvec(M_t, k) - v  # (.., d_v)
    s = sq_norm(k, xp)[..., None]
    c = eta * sign(r0, xp) * xp.minimum(xp.ones_like(r0), xp.abs(r0) / (eta * s))  # as printed
    printed = M_t - outer(c, k)
    it, _ = solve(Level(Lp(1.0), LocalL2(eta)), M_t, k, v, method="iterative")
    return rel_error(it, printed, xp)


@register_check("lp", "MATH.md 3 p=3 row as printed == generic minimiser (backtracking gradient)", 1e-9)
def _lp3_printed(xp):
    # the printed root (sqrt(1 + 12 eta s |r0|) - 1)/(6 eta s) cancels: relative error up to
    # eps / (12 eta s |r0|) ~ 1e-13 for |r0| >= 1e-3 here; the solve adds kappa * 1e-12, kappa <= 50
    M_t, k, v = _data(xp)
    eta = 0.8
    r0 = matvec(M_t, k) - v
    s = sq_norm(k, xp)[..., None]
    r_abs = (xp.sqrt(1 + 12 * eta * s * xp.abs(r0)) - 1) / (6 * eta * s)  # as printed
    c = (r0 - sign(r0, xp) * r_abs) / s
    printed = M_t - outer(c, k)
    it, _ = solve(Level(Lp(3.0), LocalL2(eta)), M_t, k, v, method="iterative")
    return rel_error(it, printed, xp)


# ---------------------------------------------------------------- Huber


def _register_huber(mode, ret_name, make_ret):
    @register_check("huber", f"{mode} {ret_name}/implicit: closed == gradient descent", TOL)
    def check(xp):
        M_t, k, v = _data(xp)
        return _closed_vs_iterative(Level(Huber(0.4, mode), make_ret(), "implicit"), M_t, k, v)


for _mode in ("coordinate", "norm"):
    _register_huber(_mode, "local_l2", lambda: LocalL2(0.8))
    _register_huber(_mode, "weight_decay", lambda: WeightDecay(0.8, 2.0))


# ---------------------------------------------------------------- weight decay


@register_check("weight_decay", "explicit: MATH.md 4 (b/(b+eta))(M_t - eta g) as printed == CG on the stated objective", TOL)
def _wd_explicit(xp):
    M_t, k, v = _data(xp)
    eta, b = 0.8, 2.0
    printed = (b / (b + eta)) * (M_t - eta * L2().grad(M_t, k, v, xp))
    it, _ = solve(Level(L2(), WeightDecay(eta, b), "explicit"), M_t, k, v, method="iterative", solver="gd")
    return rel_error(it, printed, xp)


def _register_wd(obj):
    @register_check("weight_decay", f"{obj!r}/implicit: closed (prox at lambda M_t, step eta_e) == iterative", TOL)
    def check(xp):
        M_t, k, v = _data(xp)
        return _closed_vs_iterative(Level(obj, WeightDecay(0.8, 2.0), "implicit"), M_t, k, v)


for _obj in (L2(), Lp(1.0), Lp(3.0), Huber(0.4)):
    _register_wd(_obj)


# ---------------------------------------------------------------- elastic net


@register_check("elastic_net", "explicit: MATH.md 4 S_gam(lam (M_t - eta g)) as printed == backtracking prox-grad", TOL)
def _en_explicit(xp):
    M_t, k, v = _data(xp)
    eta, b, a = 0.8, 2.0, 4.0
    lam, gam = b / (b + eta), eta * b / (a * (eta + b))
    X = lam * (M_t - eta * L2().grad(M_t, k, v, xp))
    printed = sign(X, xp) * xp.maximum(xp.abs(X) - gam, xp.zeros_like(X))
    it, _ = solve(Level(L2(), ElasticNet(eta, b, a), "explicit"), M_t, k, v, method="iterative",
                  solver="prox_grad_bt")
    return rel_error(it, printed, xp)


def _l1_kkt_violation(level, M_t, k, v, M, a, xp):
    """Largest violation of 0 in grad f(M) + (1/a) d||M||_1, relative to max(1, |grad f|)."""
    G = problem(level, M_t, k, v).grad(M)
    nz = M != 0
    on = xp.where(nz, xp.abs(G + sign(M, xp) / a), xp.zeros_like(G))
    off = xp.where(nz, xp.zeros_like(G), xp.maximum(xp.abs(G) - 1 / a, xp.zeros_like(G)))
    scale = max(1.0, max_abs_error(G, 0 * G, xp))
    return max(max_abs_error(on, 0 * on, xp), max_abs_error(off, 0 * off, xp)) / scale


def _register_en_implicit(obj):
    @register_check("elastic_net", f"{obj!r}/implicit (iterative only): KKT violation of the prox-grad solution", TOL)
    def check(xp):
        M_t, k, v = _data(xp)
        level = Level(obj, ElasticNet(0.8, 2.0, 4.0), "implicit")
        M, _ = solve(level, M_t, k, v, method="iterative")
        return _l1_kkt_violation(level, M_t, k, v, M, 4.0, xp)


for _obj in (L2(), Huber(0.4), Lp(3.0)):
    _register_en_implicit(_obj)


# ---------------------------------------------------------------- KL on a scaled simplex


@register_check("kl_simplex", "explicit: MATH.md 4 c softmax((1-lam) log M_t - eta' g) as printed == mirror descent", TOL)
def _kl_explicit(xp):
    _, k, v = _data(xp)
    eta, a, c = 0.8, 3.0, 2.0
    M_t = _simplex(xp, c)
    lam = (1 / a) / (1 / a + 1 / eta)
    eta_p = 1 / (1 / a + 1 / eta)
    Z = (1 - lam) * xp.log(M_t) - eta_p * L2().grad(M_t, k, v, xp)
    E = xp.exp(Z - xp.max(Z, axis=-1, keepdims=True))
    printed = c * E / xp.sum(E, axis=-1, keepdims=True)
    it, _ = solve(Level(L2(), KLSimplex(eta, a, c), "explicit"), M_t, k, v, method="iterative")
    return rel_error(it, printed, xp)


def _register_kl_implicit(obj):
    @register_check("kl_simplex", f"{obj!r}/implicit (iterative only): row spread of grad F (KKT) at mirror descent's solution",
                    1e-9)
    def check(xp):
        # at a minimiser in the simplex's interior grad F is constant on each row; entries of grad F
        # are O(|log M| / eta') ~ 10 here, so rounding plus the 1e-12 stop leave ~1e-10 relative
        _, k, v = _data(xp)
        M_t = _simplex(xp, 2.0)
        level = Level(obj, KLSimplex(0.8, 3.0, 2.0), "implicit")
        M, _ = solve(level, M_t, k, v, method="iterative")
        G = problem(level, M_t, k, v).grad(M)
        spread = xp.max(G, axis=-1) - xp.min(G, axis=-1)
        return max_abs_error(spread, 0 * spread, xp) / max(1.0, max_abs_error(G, 0 * G, xp))


for _obj in (L2(), Huber(0.4), Lp(3.0)):
    _register_kl_implicit(_obj)


# ---------------------------------------------------------------- lq (Moneta)


def _register_lq(q):
    @register_check("lq_moneta", f"q={q:g} explicit: grad psi*(alpha grad psi(M_t) - eta g) == Newton on the stated objective",
                    TOL)
    def check(xp):
        M_t, k, v = _data(xp)
        return _closed_vs_iterative(Level(L2(), LqMoneta(q, 0.9, 0.8), "explicit"), M_t, k, v)


for _q in (1.5, 2.0, 3.0, 4.0):
    _register_lq(_q)


@register_check("lq_moneta", "state-only explicit steps == FTRL with an explicit accumulator (8 steps, q=3)", 1e-12)
def _lq_ftrl(xp):
    q, alpha, eta = 3.0, 0.9, 0.5
    M, _, _ = _data(xp, seed=1)
    A = lq_mirror(M, q, xp)
    M_ftrl = M
    ret = LqMoneta(q, alpha, eta)
    worst = 0.0
    for t in range(8):
        _, k, v = _data(xp, seed=50 + t)
        M, _ = solve(Level(L2(), ret, "explicit"), M, k, v)
        A = alpha * A - eta * L2().grad(M_ftrl, k, v, xp)
        M_ftrl = lq_link(A, q, xp)
        worst = max(worst, rel_error(M, M_ftrl, xp))
    return worst


@register_check("lq_moneta", "L2/implicit (iterative only): gradient norm of Newton's solution", TOL)
def _lq_implicit(xp):
    M_t, k, v = _data(xp)
    level = Level(L2(), LqMoneta(3.0, 0.9, 0.8), "implicit")
    M, _ = solve(level, M_t, k, v, method="iterative")
    G = problem(level, M_t, k, v).grad(M)
    return max_abs_error(G, 0 * G, xp) / max(1.0, max_abs_error(M_t, 0 * M_t, xp))
