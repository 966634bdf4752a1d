"""The lp and Huber objectives: closed-form implicit steps vs iterative minimisation, hand derivations, errors.

Tolerances: the iterative solvers stop at a relative optimality measure of
``1e-12`` (``default_rtol``); the distance to the minimiser is at most that
times the condition number of the step's problem. With ``eta ||k||^2 <= 16``
the quadratic-retention levels here have ``kappa <= 1 + 16 * max curvature``,
which keeps the closed-vs-iterative error under ``1e-10`` (MATH.md's default);
lp with ``p > 2`` has curvature ``p (p-1) |r|^{p-2} ||k||^2``, kept moderate by
``p <= 4`` and unit-scale data.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refmem
from refmem.level import Level, solve
from refmem.metrics import rel_error
from refmem.objectives import L2, OBJECTIVES, Huber, Lp, sherman_morrison_step
from refmem.problems import level_problem
from refmem.retentions import ForgetGate, LocalL2
from conftest import CPU_BACKENDS, to_numpy

REL = 1e-10  # MATH.md default for float64 closed vs iterative (see module docstring for the bound)

seeds = st.integers(min_value=0, max_value=2**16)
etas = st.floats(min_value=0.05, max_value=4.0, allow_nan=False)
key_scales = st.floats(min_value=0.1, max_value=2.0, allow_nan=False)
ps = st.one_of(st.sampled_from([1.0, 1.5, 2.0, 3.0]), st.floats(min_value=1.0, max_value=4.0, allow_nan=False))
deltas = st.floats(min_value=0.05, max_value=3.0, allow_nan=False)
modes = st.sampled_from(["coordinate", "norm"])


def _problem(seed, key_scale, xp, batch=(3,)):
    return level_problem(seed, batch=batch, d_v=3, d_k=4, key_scale=key_scale, xp=xp)


def _lp_kappa(p, eta, k, v, M_closed, M_t):
    """Condition number of the solved problem near its minimiser (per MATH.md 3's residual equation).

    p >= 2 (primal solve): curvature of ``eta l`` along ``k`` is ``eta p (p-1) |r|^{p-2} ||k||^2``,
    taken at the larger of the start and final residuals. p < 2 (dual solve): the dual's
    curvature is ``eta ||k||^2 + phi*''(y)``, ``phi*''(y) = (|y|/p)^{(2-p)/(p-1)} / (p (p-1))``
    at ``y = p |r|^{p-1}``, over its strong convexity ``eta ||k||^2``.
    """
    kn, vn = to_numpy(k), to_numpy(v)
    s = np.sum(kn * kn, -1)[..., None]
    r = np.abs(np.einsum("...ij,...j->...i", to_numpy(M_closed), kn) - vn)
    r0 = np.abs(np.einsum("...ij,...j->...i", to_numpy(M_t), kn) - vn)
    if p >= 2:
        return float(np.max(1 + eta * p * (p - 1) * np.maximum(r, r0) ** (p - 2) * s))
    if p == 1:
        return 1.0
    y = p * r ** (p - 1)
    curv = (y / p) ** ((2 - p) / (p - 1)) / (p * (p - 1))
    return float(np.max(1 + curv / (eta * np.maximum(s, 1e-300))))


def _scaled_error(it, closed, M_t):
    """``max|it - closed|`` over the solvers' scale ``max(|M*|, |M_t|)`` (refmem.solvers.Problem.scale).

    Deliberately not :func:`refmem.metrics.rel_error`: the iterative solver's
    tolerance is stated relative to this scale, so the test measures in it.
    """
    a, b, c = to_numpy(it), to_numpy(closed), to_numpy(M_t)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), np.max(np.abs(c)))


def test_registered():
    assert OBJECTIVES["lp"] is Lp and OBJECTIVES["huber"] is Huber


# ---------------------------------------------------------------- closed == iterative


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=12)
@given(seed=seeds, p=ps, eta=etas, ks=key_scales, alpha=st.floats(min_value=0.0, max_value=1.0))
def test_lp_implicit_closed_equals_iterative(backend, seed, p, eta, ks, alpha):
    xp = refmem.backends.get_backend(backend).namespace()
    M_t, k, v = _problem(seed, ks, xp)
    for ret in (LocalL2(eta), ForgetGate(eta, alpha)):
        level = Level(Lp(p), ret, "implicit")
        Mc, _ = solve(level, M_t, k, v)
        Mi, rep = solve(level, M_t, k, v, method="iterative")
        assert rep.converged
        # stopping at relative optimality rtol leaves an error of at most ~kappa * rtol of the scale
        tol = max(REL, 10 * _lp_kappa(p, eta, k, v, Mc, M_t) * rep.tolerance)
        assert _scaled_error(Mi, Mc, M_t) <= tol, (p, ret, rep)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=12)
@given(seed=seeds, delta=deltas, mode=modes, eta=etas, ks=key_scales)
def test_huber_implicit_closed_equals_iterative(backend, seed, delta, mode, eta, ks):
    xp = refmem.backends.get_backend(backend).namespace()
    M_t, k, v = _problem(seed, ks, xp)
    level = Level(Huber(delta, mode), LocalL2(eta), "implicit")
    Mc, _ = solve(level, M_t, k, v)
    Mi, rep = solve(level, M_t, k, v, method="iterative")
    assert rel_error(Mi, Mc, xp) <= REL


@pytest.mark.parametrize("obj", [Lp(1), Lp(2.5), Huber(0.5), Huber(0.5, "norm")], ids=repr)
def test_explicit_step_is_gradient_step(xp, obj):
    """Explicit step = ``M_t - eta grad l(M_t)``, and the iterative solve of the linearised problem agrees."""
    M_t, k, v = _problem(3, 1.0, xp)
    level = Level(obj, LocalL2(0.7), "explicit")
    Mc, _ = solve(level, M_t, k, v)
    Mi, _ = solve(level, M_t, k, v, method="iterative")
    assert rel_error(Mc, M_t - 0.7 * obj.grad(M_t, k, v, xp), xp) <= 1e-15 * 8
    assert rel_error(Mi, Mc, xp) <= REL


# ---------------------------------------------------------------- hand derivations (MATH.md 3)


def _printed_lp1(C, eta, k, v):
    """MATH.md 3, p = 1 row as printed: ``c = eta sign(r0) min(1, |r0|/(eta ||k||^2))``."""
    r0 = C @ k - v
    s = k @ k
    c = eta * np.sign(r0) * np.minimum(1.0, np.abs(r0) / (eta * s))
    return C - np.outer(c, k)


def _printed_lp3(C, eta, k, v):
    """MATH.md 3, p = 3 row as printed: ``|r| = (sqrt(1 + 12 eta s |r0|) - 1)/(6 eta s)``, ``M = C - c k^T``."""
    r0 = C @ k - v
    s = k @ k
    r_abs = (np.sqrt(1 + 12 * eta * s * np.abs(r0)) - 1) / (6 * eta * s)
    r = np.sign(r0) * r_abs
    c = (r0 - r) / s
    return C - np.outer(c, k)


@pytest.mark.parametrize("p,printed", [(1.0, _printed_lp1), (3.0, _printed_lp3)])
@settings(max_examples=20)
@given(seed=seeds, eta=etas, ks=key_scales)
def test_lp_matches_printed_checked_rows(p, printed, seed, eta, ks):
    """The p = 1 and p = 3 rows of MATH.md 3, evaluated literally in NumPy, equal ``Lp.prox``.

    Bound: the printed p = 3 form subtracts 1 from a square root (cancellation
    of relative size ``1/(12 eta s |r0|)``), so it is compared at ``1e-9``;
    refmem uses the rationalised form.
    """
    xp = refmem.backends.get_backend("numpy").namespace()
    M_t, k, v = _problem(seed, ks, xp, batch=())
    got = Lp(p).prox(M_t, xp.asarray(eta), k, v, xp)
    want = printed(to_numpy(M_t), eta, to_numpy(k), to_numpy(v))
    tol = 1e-14 if p == 1 else 1e-9
    assert np.max(np.abs(to_numpy(got) - want)) <= tol * max(1.0, np.max(np.abs(want)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=20)
@given(seed=seeds, p=st.floats(min_value=1.05, max_value=5.0, allow_nan=False), eta=etas, ks=key_scales)
def test_lp_prox_solves_stationarity(backend, seed, p, eta, ks):
    """The prox output satisfies ``r + eta p ||k||^2 sign(r)|r|^{p-1} = r0`` (MATH.md 3) and ``M - C`` is ``-c k^T``.

    The equation is checked in the variable where it is well conditioned: ``x = |r|``
    for ``p > 2``; ``w = |r|^{p-1} = |c|/(eta p)`` (``c`` read off ``M`` through the
    linear relation ``r = r0 - ||k||^2 c``) for ``p < 2``, where ``|r|^{p-1}`` itself has
    an unbounded derivative at 0. Bound (written out below): rounding of
    ``r = M k - v`` and the 1-D Newton's stopping step, propagated through the
    equation's slope in that variable.
    """
    xp = refmem.backends.get_backend(backend).namespace()
    M_t, k, v = _problem(seed, ks, xp)
    M = Lp(p).prox(M_t, xp.asarray(eta, dtype=M_t.dtype), k, v, xp)
    Mn, kn, vn = to_numpy(M), to_numpy(k), to_numpy(v)
    Cn = to_numpy(M_t)
    r = np.einsum("bij,bj->bi", Mn, kn) - vn
    r0 = np.einsum("bij,bj->bi", Cn, kn) - vn
    s = np.sum(kn * kn, -1)[:, None]
    a = eta * p * s
    b = np.abs(r0)
    assert np.all((np.sign(r) == np.sign(r0)) | (np.abs(r) <= 1e-12 * (1 + b)))
    if p > 2:
        x = np.abs(r)
        lhs = x + a * x ** (p - 1)
    else:
        w = np.abs(r0 - r) / (s * eta * p)
        lhs = w ** (1 / (p - 1)) + a * w
    eps = np.finfo(float).eps
    # rounding of r = M k - v (sums of d_k products, plus the subtraction)
    d_r = 16 * eps * (1 + np.max(np.abs(Cn)) * np.max(np.sum(np.abs(kn), -1)) + np.max(np.abs(vn)) + np.max(b))
    if p > 2:  # |d lhs / dx| <= 1 + a (p-1) max|r0|^{p-2}; Newton stops within 64 eps of the bracket scale
        slope = 1 + np.max(a) * (p - 1) * (1 + np.max(b)) ** (p - 2)
        tol = slope * (d_r + 64 * eps * (1 + np.max(b)))
    else:  # w = |r0 - r|/(s eta p) carries d_r * 2/(s eta p); |d lhs / dw| <= m (1 + max|r0|)^{2-p} + a
        slope = (1 + np.max(b)) ** (2 - p) / (p - 1) + np.max(a)
        d_w = 2 * d_r / np.min(s * eta * p) + 64 * eps * (1 + np.max(b))
        tol = slope * d_w
    assert np.max(np.abs(lhs - b)) <= tol
    # the update is rank one along k: (M - C) = -c k^T, i.e. (M - C) times any vector orthogonal to k vanishes
    kperp = np.linalg.svd(kn[:, None, :])[2][:, 1:, :]  # (b, d_k - 1, d_k) orthonormal complement of k
    assert np.max(np.abs(np.einsum("bij,bmj->bim", Mn - Cn, kperp))) <= 1e-13


def test_lp2_is_twice_l2(xp):
    """``||r||_2^2 = 2 * (1/2 ||r||^2)``: the lp prox at p = 2 is the Sherman-Morrison step with ``2 eta``."""
    M_t, k, v = _problem(5, 1.3, xp)
    eta = xp.asarray(0.9, dtype=M_t.dtype)
    a = Lp(2).prox(M_t, eta, k, v, xp)
    b = sherman_morrison_step(M_t, 2 * eta, k, v, xp)
    assert rel_error(a, b, xp) <= 1e-14
    assert rel_error(Lp(2).value(M_t, k, v, xp), 2 * L2().value(M_t, k, v, xp), xp) <= 1e-15


def test_lp1_zero_key_keeps_state(xp):
    M_t, _, v = _problem(1, 1.0, xp)
    k = xp.zeros((3, 4), dtype=M_t.dtype)
    for p in (1.0, 1.5, 3.0):
        M = Lp(p).prox(M_t, xp.asarray(1.0, dtype=M_t.dtype), k, v, xp)
        assert rel_error(M, M_t, xp) == 0.0


@pytest.mark.parametrize("mode", ["coordinate", "norm"])
def test_huber_prox_both_branches(mode):
    """Hand check of both branches of the Huber implicit step (scalar d_v = 1 and d_v = 2 cases)."""
    xp = refmem.backends.get_backend("numpy").namespace()
    k = xp.asarray([[1.0, 0.0]])
    C = xp.zeros((1, 2, 2))
    eta, delta = 0.5, 1.0  # s = 1, so 1 + eta s = 1.5
    for v0, want_r in ((-1.2, 1.2 / 1.5), (-6.0, 6.0 - 0.5 * 1.0)):  # inside: r0/1.5; outside: r0 - eta s delta
        v = xp.asarray([[v0, 0.0]])  # r0 = C k - v = (-v0, 0)
        M = Huber(delta, mode).prox(C, xp.asarray(eta), k, v, xp)
        r = to_numpy(M[0] @ k[0] - v[0])
        assert abs(r[0] - want_r) <= 1e-15 and abs(r[1]) == 0.0


@pytest.mark.parametrize("obj", [Lp(1.5), Lp(3.0), Lp(4.5), Huber(0.4), Huber(0.4, "norm")], ids=repr)
def test_gradient_by_finite_differences(obj):
    """Central differences of ``value`` vs ``grad`` (step h: error ~ h^2 f''' + eps f / h, about 1e-7 here)."""
    xp = refmem.backends.get_backend("numpy").namespace()
    M, k, v = _problem(11, 1.0, xp, batch=())
    G = to_numpy(obj.grad(M, k, v, xp))
    Mn = to_numpy(M)
    h = 1e-5
    fd = np.zeros_like(Mn)
    for i in range(Mn.shape[0]):
        for j in range(Mn.shape[1]):
            E = np.zeros_like(Mn)
            E[i, j] = h
            fd[i, j] = (float(obj.value(xp.asarray(Mn + E), k, v, xp)) - float(obj.value(xp.asarray(Mn - E), k, v, xp))) / (2 * h)
    assert np.max(np.abs(fd - G)) <= 1e-6 * max(1.0, np.max(np.abs(G)))


def test_backends_agree():
    """numpy == array_api_strict for every closed form here (same seeded draws; rounding-level difference)."""
    outs = {}
    for name in ("numpy", "array_api_strict"):
        with refmem.backend(name) as xp:
            M_t, k, v = _problem(7, 1.2, xp)
            eta = xp.asarray(0.8, dtype=M_t.dtype)
            outs[name] = [to_numpy(o.prox(M_t, eta, k, v, xp)) for o in (Lp(1), Lp(1.7), Lp(3), Huber(0.3), Huber(0.3, "norm"))]
    for a, b in zip(outs["numpy"], outs["array_api_strict"]):
        assert np.max(np.abs(a - b)) <= 1e-14 * max(1.0, np.max(np.abs(a)))


def test_dual_solver_is_chosen_for_nonsmooth_lp(xp):
    M_t, k, v = _problem(2, 1.0, xp)
    _, rep = solve(Level(Lp(1), LocalL2(1.0)), M_t, k, v, method="iterative")
    assert rep.solver == "residual_dual" and rep.converged
    _, rep = solve(Level(Lp(3), LocalL2(1.0)), M_t, k, v, method="iterative")
    assert rep.solver == "prox_grad_bt"


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("p", [0.5, 0.0, -1.0, math.nan, math.inf])
def test_lp_bad_p(p):
    with pytest.raises(ValueError, match="p must be"):
        Lp(p)


@pytest.mark.parametrize("p", ["3", None, True])
def test_lp_p_type(p):
    with pytest.raises(TypeError, match="p must be"):
        Lp(p)


@pytest.mark.parametrize("delta", [0.0, -1.0, math.nan, math.inf])
def test_huber_bad_delta(delta):
    with pytest.raises(ValueError, match="delta must be"):
        Huber(delta)


def test_huber_bad_mode_and_type():
    with pytest.raises(ValueError, match="mode must be"):
        Huber(1.0, "rows")
    with pytest.raises(TypeError, match="delta must be"):
        Huber("1")


@pytest.mark.parametrize("obj", [Lp(1), Lp(3), Huber(1.0)], ids=repr)
def test_non_finite_inputs(xp, obj):
    M_t, k, v = _problem(0, 1.0, xp)
    bad = M_t + xp.asarray(math.nan, dtype=M_t.dtype)
    with pytest.raises(ValueError, match="M_t contains non-finite"):
        solve(Level(obj, LocalL2(1.0)), bad, k, v)
    with pytest.raises(ValueError, match="eta must"):
        solve(Level(obj, LocalL2(-1.0)), M_t, k, v)
