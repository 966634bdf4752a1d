"""Retentions of MATH.md 4: weight decay, elastic net, KL on a scaled simplex, Moneta's lq rule.

Closed forms are compared with the iterative solvers (which minimise the
stated objective and know nothing of the closed forms), with the MATH.md
formulas evaluated literally in NumPy, and with optimality (KKT) conditions
written out by hand. Tolerance: MATH.md's 1e-10 relative for closed vs
iterative unless a bound is stated next to the check; the solvers stop at
relative optimality 1e-12 and these problems have condition numbers below
~10 (weight decay, elastic net: 1; KL: the entropy's curvature ratio over a
simplex whose entries are at least 0.05 c / d_k, handled by the mirror step;
lq: Newton, which is scale invariant).
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refmem
from refmem.level import Level, problem, solve
from refmem.metrics import rel_error
from refmem.objectives import L2, Dot, Huber, Inner, Lp
from refmem.problems import level_problem, to_backend
from refmem.solvers import ConvergenceError
from refmem.retentions import RETENTIONS, ElasticNet, ForgetGate, KLSimplex, LocalL2, LqMoneta, WeightDecay
from refmem.retentions.lq_moneta import lq_link, lq_mirror, lq_norm, moneta_printed_rule

from conftest import CPU_BACKENDS, to_numpy

REL = 1e-10

seeds = st.integers(min_value=0, max_value=2**16)
etas = st.floats(min_value=0.05, max_value=4.0, allow_nan=False)
bs = st.floats(min_value=0.05, max_value=10.0, allow_nan=False)
alphas = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
qs = st.one_of(st.sampled_from([1.5, 2.0, 3.0, 4.0]), st.floats(min_value=1.2, max_value=5.0, allow_nan=False))
SMOOTH_OBJECTIVES = [L2(), Huber(0.5), Huber(0.5, "norm"), Lp(3.0)]


def _ns(backend):
    return refmem.backends.get_backend(backend).namespace()


def _problem(seed, xp, batch=(3,), key_scale=1.0):
    return level_problem(seed, batch=batch, d_v=3, d_k=4, key_scale=key_scale, xp=xp)


def _simplex_state(seed, xp, c, batch=(3,), d_v=3, d_k=4):
    """Rows positive (entries >= 0.05 c / d_k) summing to c."""
    P = np.random.default_rng(seed).uniform(0.1, 1.0, size=batch + (d_v, d_k))
    return to_backend(c * P / P.sum(-1, keepdims=True), xp)


def test_registered():
    for name, cls in [("weight_decay", WeightDecay), ("elastic_net", ElasticNet), ("kl_simplex", KLSimplex),
                      ("lq_moneta", LqMoneta)]:
        assert RETENTIONS[name] is cls


# ---------------------------------------------------------------- weight decay


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=10)
@given(seed=seeds, eta=etas, b=bs)
def test_weight_decay_closed_equals_iterative(backend, seed, eta, b):
    xp = _ns(backend)
    M_t, k, v = _problem(seed, xp)
    ret = WeightDecay(eta, b)
    # explicit: MATH.md 4 literally, (b/(b+eta)) (M_t - eta g)
    g = to_numpy(L2().grad(M_t, k, v, xp))
    want = (b / (b + eta)) * (to_numpy(M_t) - eta * g)
    Mc, _ = solve(Level(L2(), ret, "explicit"), M_t, k, v)
    assert np.max(np.abs(to_numpy(Mc) - want)) <= 1e-14 * max(1, np.max(np.abs(want)))
    for obj in SMOOTH_OBJECTIVES + [Dot()]:
        for step in ("explicit", "implicit"):
            level = Level(obj, ret, step)
            Mc, _ = solve(level, M_t, k, v)
            Mi, rep = solve(level, M_t, k, v, method="iterative")
            # Lp(3): curvature 6 |r| ||k||^2 makes kappa up to ~1 + 6 eta_e max|r| ||k||^2 (<= 100 here)
            assert rel_error(Mi, Mc, xp) <= (1e-9 if obj.name == "lp" else REL), (obj, step, rep)


def test_weight_decay_is_a_shifted_proximal_term(xp):
    """The completed square of the docstring: Ret(M) = 1/(2 eta_e)||M - lam M_t||^2 + ||M_t||^2/(2 (eta + b))."""
    eta, b = 0.7, 2.5
    M_t, _, _ = _problem(1, xp)
    M, _, _ = _problem(2, xp)
    ret = WeightDecay(eta, b).bind(xp, M_t.dtype)
    lam, eta_e = b / (b + eta), eta * b / (eta + b)
    Mn, Mtn = to_numpy(M), to_numpy(M_t)
    want = np.sum((Mn - lam * Mtn) ** 2, axis=(-2, -1)) / (2 * eta_e) + np.sum(Mtn**2, axis=(-2, -1)) / (2 * (eta + b))
    got = to_numpy(ret.value(M, M_t, xp))
    assert np.max(np.abs(got - want)) <= 1e-14 * np.max(np.abs(want))


# ---------------------------------------------------------------- elastic net


def _soft(x, g):
    return np.sign(x) * np.maximum(np.abs(x) - g, 0.0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=10)
@given(seed=seeds, eta=etas, b=bs, a=st.floats(min_value=0.2, max_value=20.0, allow_nan=False))
def test_elastic_net_explicit(backend, seed, eta, b, a):
    """MATH.md 4 literally (S_gam(lam (M_t - eta g))), the KKT conditions, and the iterative solves."""
    xp = _ns(backend)
    M_t, k, v = _problem(seed, xp)
    ret = ElasticNet(eta, b, a)
    level = Level(L2(), ret, "explicit")
    Mc, _ = solve(level, M_t, k, v)
    g = to_numpy(L2().grad(M_t, k, v, xp))
    lam, gam = b / (b + eta), eta * b / (a * (eta + b))
    want = _soft(lam * (to_numpy(M_t) - eta * g), gam)
    assert np.max(np.abs(to_numpy(Mc) - want)) <= 1e-14 * max(1, np.max(np.abs(want)))
    _check_l1_kkt(level, M_t, k, v, Mc, xp, a)
    for solver in ("prox_grad", "prox_grad_bt"):
        Mi, _ = solve(level, M_t, k, v, method="iterative", solver=solver)
        assert rel_error(Mi, Mc, xp) <= REL, solver


def _check_l1_kkt(level, M_t, k, v, M, xp, a):
    """0 in grad f(M) + (1/a) d||M||_1: grad = -sign(M)/a where M != 0, |grad| <= 1/a where M = 0.

    Bound: the smooth gradient has terms of size |M|/eta_e + |g|; its rounding and the
    solvers' 1e-12 relative stop give 1e-10 of the data scale.
    """
    prob = problem(level, M_t, k, v)
    G = to_numpy(prob.grad(M))
    Mn = to_numpy(M)
    tol = 1e-10 * max(1.0, np.max(np.abs(G)), 1 / a)
    nz = Mn != 0
    assert np.all(np.abs(G[nz] + np.sign(Mn[nz]) / a) <= tol)
    assert np.all(np.abs(G[~nz]) <= 1 / a + tol)


@pytest.mark.parametrize("obj", SMOOTH_OBJECTIVES + [Lp(1.0)], ids=repr)
def test_elastic_net_implicit_iterative_only(xp, obj):
    """No closed form (the l1 term breaks the rank-one structure): the iterative solve meets the KKT conditions,
    and two different solvers agree."""
    M_t, k, v = _problem(4, xp)
    level = Level(obj, ElasticNet(0.8, 2.0, 3.0), "implicit")
    with pytest.raises(refmem.ClosedFormUnavailable):
        solve(level, M_t, k, v)
    Mi, rep = solve(level, M_t, k, v, method="iterative")
    assert rep.converged
    if obj.smooth if hasattr(obj, "smooth") else True:
        _check_l1_kkt(level, M_t, k, v, Mi, xp, 3.0)
        other = "prox_grad_bt" if rep.solver != "prox_grad_bt" else "prox_grad"
        if not (obj.name == "lp" and other == "prox_grad"):  # fixed-step prox_grad needs a global Lipschitz bound
            Mo, _ = solve(level, M_t, k, v, method="iterative", solver=other)
            assert rel_error(Mo, Mi, xp) <= REL


def test_linear_objective_implicit_is_explicit(xp):
    M_t, k, v = _problem(6, xp)
    Ms = _simplex_state(6, xp, 2.0)
    for ret, M0 in [(ElasticNet(0.8, 2.0, 3.0), M_t), (KLSimplex(0.8, 2.0, 2.0), Ms), (LqMoneta(3.0, 0.9, 0.8), M_t)]:
        a, _ = solve(Level(Dot(), ret, "implicit"), M0, k, v)
        b, _ = solve(Level(Dot(), ret, "explicit"), M0, k, v)
        assert rel_error(a, b, xp) == 0.0
        it, _ = solve(Level(Dot(), ret, "implicit"), M0, k, v, method="iterative")
        assert rel_error(it, a, xp) <= REL, ret


# ---------------------------------------------------------------- KL on a scaled simplex


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=6)
@given(seed=seeds, eta=etas, a=bs, c=st.floats(min_value=0.1, max_value=10.0, allow_nan=False))
def test_kl_explicit(backend, seed, eta, a, c):
    """MATH.md 4 literally, positivity, row sums, the KKT condition, and mirror descent."""
    xp = _ns(backend)
    _, k, v = _problem(seed, xp)
    M_t = _simplex_state(seed, xp, c)
    level = Level(L2(), KLSimplex(eta, a, c), "explicit")
    Mc, _ = solve(level, M_t, k, v)
    g = to_numpy(L2().grad(M_t, k, v, xp))
    lam = (1 / a) / (1 / a + 1 / eta)
    eta_p = 1 / (1 / a + 1 / eta)
    Z = (1 - lam) * np.log(to_numpy(M_t)) - eta_p * g
    want = c * np.exp(Z - Z.max(-1, keepdims=True)) / np.exp(Z - Z.max(-1, keepdims=True)).sum(-1, keepdims=True)
    Mn = to_numpy(Mc)
    assert np.max(np.abs(Mn - want)) <= 1e-14 * c * 4
    assert np.all(Mn > 0) and np.max(np.abs(Mn.sum(-1) - c)) <= 16 * 4 * np.finfo(float).eps * c
    _check_simplex_kkt(level, M_t, k, v, Mc, xp)
    Mi, rep = solve(level, M_t, k, v, method="iterative")
    assert rep.solver == "mirror_descent"
    # mirror descent's stop bounds the error by rtol times the entropy's curvature ratio over the
    # iterates (max M / min M <= 10 here for the start; the minimiser's spread is bounded by
    # exp(eta' |g|) with |g| <= a few): derived bound 1e-10 * c
    assert np.max(np.abs(to_numpy(Mi) - Mn)) <= REL * c


def _check_simplex_kkt(level, M_t, k, v, M, xp):
    """At a minimiser on the simplex with M > 0, grad F is constant along each row (its multiplier).

    Bound: entries of grad F are O(|log M| / eta' + |g|); rounding and the solve's 1e-12 stop.
    """
    G = to_numpy(problem(level, M_t, k, v).grad(M))
    spread = G.max(-1) - G.min(-1)
    assert np.max(spread) <= 1e-9 * max(1.0, np.max(np.abs(G)))


@pytest.mark.parametrize("obj", SMOOTH_OBJECTIVES + [Lp(1.0), Lp(1.5)], ids=repr)
def test_kl_implicit_iterative_only(xp, obj):
    """No closed form: the iterative solve stays on the simplex and meets the KKT condition (smooth l)."""
    _, k, v = _problem(8, xp)
    M_t = _simplex_state(8, xp, 2.0)
    level = Level(obj, KLSimplex(0.8, 3.0, 2.0), "implicit")
    with pytest.raises(refmem.ClosedFormUnavailable):
        solve(level, M_t, k, v)
    try:
        Mi, rep = solve(level, M_t, k, v, method="iterative")
    except ConvergenceError as exc:
        # p = 1 under KL (no Lipschitz constant L_R): the dual's accuracy bounds nothing on the state, and the
        # subgradient certificate holds only where the residual is off its kink; here r_i ~ 1e-14 sits at it
        assert getattr(obj, "p", None) == 1.0 and "p = 1" in str(exc) and "L_R = inf" in str(exc)
        return
    Mn = to_numpy(Mi)
    assert np.all(Mn > 0) and np.max(np.abs(Mn.sum(-1) - 2.0)) <= 1e-13
    if getattr(obj, "smooth", True):
        _check_simplex_kkt(level, M_t, k, v, Mi, xp)
    else:  # lp with p < 2 went through the dual; compare with mirror descent on the primal where p > 1
        assert rep.solver == "residual_dual"
        if obj.p > 1:
            Mo, _ = solve(level, M_t, k, v, method="iterative", solver="mirror_descent")
            assert rel_error(Mo, Mi, xp) <= 1e-8  # primal MD on |r|^{1.5} (gradient not Lipschitz): 1e-8


@pytest.mark.parametrize("bad,match", [
    ("negative", "strictly positive"), ("sum", "sum to c"),
])
def test_kl_state_off_simplex(xp, bad, match):
    _, k, v = _problem(0, xp)
    M_t = _simplex_state(0, xp, 1.0)
    M_t = -M_t if bad == "negative" else 1.01 * M_t
    with pytest.raises(ValueError, match=match):
        solve(Level(L2(), KLSimplex(1.0, 1.0, 1.0), "explicit"), M_t, k, v)


# ---------------------------------------------------------------- lq (Moneta)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=8)
@given(seed=seeds, q=qs, eta=etas, alpha=alphas)
def test_lq_explicit_closed_equals_iterative(backend, seed, q, eta, alpha):
    """The consistent lq rule == Newton on the stated objective <g, M> + Ret(M, M_t) (module docstring)."""
    xp = _ns(backend)
    M_t, k, v = _problem(seed, xp)
    level = Level(L2(), LqMoneta(q, alpha, eta), "explicit")
    Mc, _ = solve(level, M_t, k, v)
    Mi, rep = solve(level, M_t, k, v, method="iterative")
    assert rep.solver == "newton_fd"
    assert rel_error(Mi, Mc, xp) <= REL


def test_lq_ftrl_recursion(xp):
    """A run of explicit steps (state only) == FTRL with an explicit accumulator A_t = alpha A - eta g, M = grad psi*(A)."""
    q, alpha, eta = 3.0, 0.9, 0.5
    M, _, _ = _problem(0, xp)
    ret = LqMoneta(q, alpha, eta)
    A = lq_mirror(M, q, xp)
    M_ftrl = M
    for t in range(6):
        _, k, v = _problem(100 + t, xp)
        M, _ = solve(Level(L2(), ret, "explicit"), M, k, v)
        A = alpha * A - eta * L2().grad(M_ftrl, k, v, xp)
        M_ftrl = lq_link(A, q, xp)
        assert rel_error(M, M_ftrl, xp) <= 1e-13


def test_lq_link_inverts_mirror_and_is_homogeneous(xp):
    M, _, _ = _problem(3, xp)
    for q in (1.5, 3.0, 4.0):
        assert rel_error(lq_link(lq_mirror(M, q, xp), q, xp), M, xp) <= 1e-14
        assert rel_error(lq_link(2.5 * M, q, xp), 2.5 * lq_link(M, q, xp), xp) <= 1e-14


def test_lq_printed_rule_erratum():
    """MATH.md 4, last row as printed (M = A / ||A||_q^{q-2}) is not the FTRL state for q != 2.

    (1) it differs from grad psi*(A); (2) its Jacobian is not symmetric, so it is not the
    gradient of any function, hence not argmin_M -<A, M> + R(M) for any convex R;
    (3) it is homogeneous of degree 3 - q, not 1; (4) for q = 2 it is exact; (5) it is the
    Euclidean FTRL state with the accumulator-dependent step ||A||_q^{2-q}.
    """
    xp = refmem.backends.get_backend("numpy").namespace()
    A = xp.asarray(np.random.default_rng(0).standard_normal((2, 3)))
    q = 3.0
    printed, consistent = moneta_printed_rule(A, q, xp), lq_link(A, q, xp)
    assert rel_error(printed, consistent, xp) > 0.1
    # Jacobian by central differences (h = 1e-6: error ~ 1e-10, far below the asymmetry measured)
    f = lambda X: np.asarray(moneta_printed_rule(xp.asarray(X), q, xp)).ravel()  # noqa: E731
    An = np.asarray(A)
    J = np.zeros((6, 6))
    for j in range(6):
        E = np.zeros(6)
        E[j] = 1e-6
        J[:, j] = (f(An + E.reshape(2, 3)) - f(An - E.reshape(2, 3))) / 2e-6
    assert np.max(np.abs(J - J.T)) > 1e-2 * np.max(np.abs(J))
    Jc = np.zeros((6, 6))
    g = lambda X: np.asarray(lq_link(xp.asarray(X), q, xp)).ravel()  # noqa: E731
    for j in range(6):
        E = np.zeros(6)
        E[j] = 1e-6
        Jc[:, j] = (g(An + E.reshape(2, 3)) - g(An - E.reshape(2, 3))) / 2e-6
    assert np.max(np.abs(Jc - Jc.T)) <= 1e-8 * np.max(np.abs(Jc))  # the consistent map is a gradient field
    s = 3.0
    assert rel_error(moneta_printed_rule(s * A, q, xp), s ** (3 - q) * printed, xp) <= 1e-14
    assert rel_error(moneta_printed_rule(A, 2.0, xp), lq_link(A, 2.0, xp), xp) <= 1e-15
    # what it does solve: FTRL with the Euclidean regulariser and scalar step ||A||_q^{2-q}
    # (argmin_M -<A, M> + ||M||^2 / (2 step), minimised iteratively from 0)
    step = float(lq_norm(A[None], q, xp)[0]) ** (2 - q)
    it, _ = solve(Level(Inner(), LocalL2(step), "explicit"), xp.zeros_like(A), None, A, method="iterative")
    assert rel_error(it, printed, xp) <= 1e-12


def test_lq_q2_is_forget_gate(xp):
    M_t, k, v = _problem(9, xp)
    a, _ = solve(Level(L2(), LqMoneta(2.0, 0.7, 0.4), "explicit"), M_t, k, v)
    b, _ = solve(Level(L2(), ForgetGate(0.4, 0.7), "explicit"), M_t, k, v)
    assert rel_error(a, b, xp) <= 1e-14


@pytest.mark.parametrize("obj", SMOOTH_OBJECTIVES, ids=repr)
def test_lq_implicit_iterative_only(xp, obj):
    """No closed form; Newton and backtracking gradient steps on the stated objective agree
    (the latter stops on a gradient mapping without strong convexity (mu = 0 for q > 2): 1e-8)."""
    M_t, k, v = _problem(10, xp)
    level = Level(obj, LqMoneta(3.0, 0.9, 0.6), "implicit")
    with pytest.raises(refmem.ClosedFormUnavailable):
        solve(level, M_t, k, v)
    Mi, rep = solve(level, M_t, k, v, method="iterative")
    assert rep.solver == "newton_fd"
    G = to_numpy(problem(level, M_t, k, v).grad(Mi))
    assert np.max(np.abs(G)) <= 1e-10 * max(1.0, np.max(np.abs(to_numpy(M_t))))


def test_lq_norm():
    xp = refmem.backends.get_backend("numpy").namespace()
    A = xp.asarray([[3.0, -4.0]])
    assert abs(float(lq_norm(A, 2.0, xp)) - 5.0) <= 1e-15
    assert abs(float(lq_norm(A, 1.0, xp)) - 7.0) <= 1e-15


# ---------------------------------------------------------------- backends agree, bad inputs


def test_backends_agree():
    outs = {}
    for name in CPU_BACKENDS:
        with refmem.backend(name) as xp:
            M_t, k, v = _problem(12, xp)
            Ms = _simplex_state(12, xp, 1.5)
            res = []
            for ret, M0 in [(WeightDecay(0.6, 2.0), M_t), (ElasticNet(0.6, 2.0, 4.0), M_t),
                            (KLSimplex(0.6, 2.0, 1.5), Ms), (LqMoneta(3.5, 0.8, 0.6), M_t)]:
                res.append(to_numpy(solve(Level(Huber(0.4), ret, "explicit"), M0, k, v)[0]))
            res.append(to_numpy(solve(Level(Lp(3.0), WeightDecay(0.6, 2.0), "implicit"), M_t, k, v)[0]))
            outs[name] = res
    for a, b in zip(*outs.values()):
        assert np.max(np.abs(a - b)) <= 1e-14 * max(1.0, np.max(np.abs(a)))


@pytest.mark.parametrize("ret,match", [
    (WeightDecay(1.0, 0.0), "b must"), (WeightDecay(1.0, -2.0), "b must"), (WeightDecay(0.0, 1.0), "eta must"),
    (ElasticNet(1.0, 1.0, 0.0), "a must"), (ElasticNet(1.0, -1.0, 1.0), "b must"),
    (ElasticNet(1.0, 1.0, math.nan), "a must"),
    (KLSimplex(1.0, 1.0, 0.0), "c must"), (KLSimplex(1.0, -1.0, 1.0), "a must"), (KLSimplex(-1.0, 1.0, 1.0), "eta must"),
    (LqMoneta(3.0, 1.5, 1.0), "alpha must"), (LqMoneta(3.0, 1.0, 0.0), "eta must"),
])
def test_bad_parameters(xp, ret, match):
    M_t, k, v = _problem(0, xp)
    if isinstance(ret, KLSimplex):
        M_t = _simplex_state(0, xp, 1.0)
    with pytest.raises(ValueError, match=match):
        solve(Level(L2(), ret, "explicit"), M_t, k, v)


@pytest.mark.parametrize("q", [1.0, 0.5, -2.0, math.inf, math.nan])
def test_lq_bad_q(q):
    with pytest.raises(ValueError, match="q must be"):
        LqMoneta(q)
    with pytest.raises(TypeError, match="q must be"):
        LqMoneta("3")


def test_non_finite_state(xp):
    M_t, k, v = _problem(0, xp)
    bad = M_t + xp.asarray(math.nan, dtype=M_t.dtype)
    for ret in (WeightDecay(), ElasticNet(), LqMoneta()):
        with pytest.raises(ValueError, match="non-finite"):
            solve(Level(L2(), ret, "explicit"), bad, k, v)
    with pytest.raises(ValueError, match="non-finite"):
        solve(Level(L2(), KLSimplex(), "explicit"), bad, k, v)


def test_verify_checks_registered_and_pass():
    """``refmem verify`` has rows for every objective and retention of this area, and they pass on NumPy."""
    from refmem.verify import run_checks

    specs = ["lp", "huber", "weight_decay", "elastic_net", "kl_simplex", "lq_moneta"]
    rows = [r for r in run_checks("numpy", spec_filter=specs) if r["spec"] in specs]
    assert {r["spec"] for r in rows} == set(specs)
    assert all(r["status"] == "pass" for r in rows), [r for r in rows if r["status"] != "pass"]


@pytest.mark.parametrize("ret_name", ["weight_decay", "elastic_net", "kl_simplex", "lq_moneta"])
def test_float32_closed_equals_iterative(xp, ret_name):
    """float32: the solvers stop at relative optimality 1e-5 (``default_rtol``); with condition numbers
    below 10 the error bound is 1e-4 relative; the result keeps the input dtype."""
    M_t, k, v = level_problem(0, batch=(4,), d_v=3, d_k=4, xp=xp, dtype="float32")
    ret = {"weight_decay": WeightDecay(0.7, 2.0), "elastic_net": ElasticNet(0.7, 2.0, 4.0),
           "kl_simplex": KLSimplex(0.7, 2.0, 1.0), "lq_moneta": LqMoneta(3.0, 0.9, 0.7)}[ret_name]
    if ret_name == "kl_simplex":
        P = np.random.default_rng(0).uniform(0.2, 1.0, (4, 3, 4))
        M_t = to_backend(P / P.sum(-1, keepdims=True), xp, "float32")
    for obj in (L2(), Huber(0.3), Lp(1.0), Lp(3.0)):
        for step in ("explicit", "implicit"):
            level = Level(obj, ret, step)
            try:
                Mc, _ = solve(level, M_t, k, v)
            except refmem.ClosedFormUnavailable:
                continue
            Mi, _ = solve(level, M_t, k, v, method="iterative")
            assert Mc.dtype == M_t.dtype and Mi.dtype == M_t.dtype
            assert rel_error(Mi, Mc, xp) <= 1e-4, (obj, step)


@pytest.mark.parametrize("ret", [ElasticNet(0.7, 2.0, 4.0), KLSimplex(0.7, 2.0, 1.0), LqMoneta(3.0, 0.8, 0.7),
                                 WeightDecay(0.7, 2.0)], ids=lambda r: r.name)
def test_retained_state_is_the_step_without_input(xp, ret):
    """``retained(M_t)`` = the explicit step with g = 0; an explicit step linearised there: closed == iterative."""
    M_t, k, v = _problem(13, xp)
    if isinstance(ret, KLSimplex):
        M_t = _simplex_state(13, xp, 1.0)
    bound = ret.bind(xp, M_t.dtype)
    assert rel_error(bound.retained(M_t, xp), bound.explicit_step(M_t, 0 * M_t, xp), xp) <= 1e-15
    level = Level(L2(), ret, "explicit", linearize_at="retained")
    Mc, _ = solve(level, M_t, k, v)
    Mi, _ = solve(level, M_t, k, v, method="iterative")
    assert rel_error(Mi, Mc, xp) <= REL
