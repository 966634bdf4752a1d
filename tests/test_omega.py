"""Omega (explicit and implicit) against its definition, its reductions, and the windowed l2 objective (MATH.md 5)."""

import numpy as np
import pytest

from conftest import to_numpy
from memory_inputs import EPS, assert_check_passes
from memory_inputs import np_inputs, on, rel, tol_same
from refmem.checks.scan_steps import CLOSED_VS_ITERATIVE_TOL
from refmem.memories import MEMORIES


def np_omega(q, k, v, alpha, gamma, M0, step):
    """Omega from its definition: window of tokens t-c+1..t (absent before 0); explicit = a M - grad at M,
    implicit = the d_k x d_k normal equations M (I + K^T G K) = a M_{t-1} + V^T G K (np.linalg.solve, not the SVD basis)."""
    B, T, d_k = k.shape
    c = gamma.shape[-1]
    M = M0.copy()
    o = np.zeros(v.shape)
    for n in range(B):
        for t in range(T):
            g = gamma if gamma.ndim == 1 else gamma[n, t]
            idx = [(t - c + 1 + j, g[j]) for j in range(c) if t - c + 1 + j >= 0]
            A = sum(w * np.outer(k[n, i], k[n, i]) for i, w in idx)
            Bv = sum(w * np.outer(v[n, i], k[n, i]) for i, w in idx)
            if step == "explicit":
                M[n] = alpha[n, t] * M[n] - (M[n] @ A - Bv)
            else:
                M[n] = np.linalg.solve(np.eye(d_k) + A, (alpha[n, t] * M[n] + Bv).T).T  # A symmetric
            o[n, t] = M[n] @ q[n, t]
    return o, M


@pytest.mark.parametrize("step", ["explicit", "implicit"])
@pytest.mark.parametrize("c", [1, 3, 7])
def test_omega_matches_definition(xp, step, c):
    from refmem.memories.omega import omega_recurrent

    inputs = np_inputs("omega", seed=61, T=6, c=c)
    if step == "implicit":
        inputs["gamma"] *= 5  # large weights: fine for the implicit rule
    M0 = np.random.default_rng(62).standard_normal((2, 3, 4))
    o, M = omega_recurrent(**on(xp, inputs), step=step, initial_state=xp.asarray(M0))
    o_ref, M_ref = np_omega(**inputs, M0=M0, step=step)
    # implicit: LAPACK solve with condition <= 1 + sum gam ||k||^2 < 20 on each side
    f = 1 if step == "explicit" else 20
    assert rel(o, o_ref) <= f * tol_same(max(4, c), T=6)
    assert rel(M, M_ref) <= f * tol_same(max(4, c), T=6)


def test_omega_shared_gamma(xp):
    from refmem.memories.omega import omega_recurrent

    inputs = np_inputs("omega", seed=63, T=5)
    shared = np.array([0.05, 0.1, 0.3])
    o1, M1 = omega_recurrent(**on(xp, dict(inputs, gamma=shared)))
    o2, M2 = omega_recurrent(**on(xp, dict(inputs, gamma=np.broadcast_to(shared, (2, 5, 3)).copy())))
    assert rel(o1, to_numpy(o2)) == 0.0 and rel(M1, to_numpy(M2)) == 0.0


def test_omega_c1_is_delta_rule_and_longhorn(xp):
    from refmem.memories.omega import omega_recurrent

    assert_check_passes(xp, "omega", "c = 1, a = 1: explicit == delta rule, implicit == Longhorn")
    inputs = on(xp, np_inputs("delta_rule", seed=64, T=9))
    q, k, v, b = inputs["q"], inputs["k"], inputs["v"], inputs["beta"]
    one = xp.ones_like(b)
    # with a < 1 Omega (gradient at M) is not the gated delta rule (gradient at a M)
    a = 0.5 * one
    o5, _ = omega_recurrent(q, k, v, a, b[..., None])
    o6, _ = MEMORIES["gated_delta_rule"].recurrent(q, k, v, a, b)
    assert rel(o5, to_numpy(o6)) > 1e-3


def test_omega_implicit_stable_where_explicit_diverges(xp):
    from refmem.memories.omega import omega_implicit_recurrent, omega_recurrent

    g = np.random.default_rng(65)
    T, c = 40, 4
    k = g.standard_normal((1, T, 4))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    q, v = g.standard_normal((1, T, 4)), g.standard_normal((1, T, 3))
    args = [xp.asarray(a) for a in (q, k, v, np.ones((1, T)), np.full(c, 2.0))]  # sum gam ||k||^2 = 8 > 2
    _, M_exp = omega_recurrent(*args)
    _, M_imp = omega_implicit_recurrent(*args)
    # implicit: M_t = (a M_{t-1} + V^T G K)(I + K^T G K)^{-1}, and ||(I + A)^{-1}|| <= 1, ||V^T G K (I + A)^{-1}|| <=
    # ||V^T G^{1/2}|| ||G^{1/2} K (I + A)^{-1}|| <= ||V^T G^{1/2}|| / 2: the norm grows at most linearly in T
    bound = T * np.sqrt(2.0 * c) * np.max(np.linalg.norm(v, axis=-1)) / 2
    assert np.linalg.norm(to_numpy(M_imp)) <= bound
    assert np.linalg.norm(to_numpy(M_exp)) > 1e6 * bound


def test_omega_bad_inputs(xp):
    from refmem.memories.omega import omega_recurrent

    inputs = np_inputs("omega")
    with pytest.raises(ValueError, match=r"gamma must have shape \[c\]"):
        omega_recurrent(**on(xp, dict(inputs, gamma=np.ones((2, 3)))))
    with pytest.raises(ValueError, match="gamma must lie in"):
        omega_recurrent(**on(xp, dict(inputs, gamma=-inputs["gamma"])))
    with pytest.raises(ValueError, match="c >= 1"):
        omega_recurrent(**on(xp, dict(inputs, gamma=np.ones((0,)))))
    with pytest.raises(ValueError, match="step must be"):
        omega_recurrent(**on(xp, inputs), step="semi")
    with pytest.raises(TypeError, match="gamma"):
        omega_recurrent(**on(xp, dict(inputs, gamma=inputs["gamma"].astype(np.float32))))


def test_windowed_l2_objective(xp):
    """Gradient: exact for a quadratic by central differences <grad, D> = (f(M + hD) - f(M - hD)) / 2h
    (the third derivative is 0: only rounding, ~ eps |f| / h); prox (SVD basis) vs the d_k x d_k solve."""
    from refmem import Level, solve
    from refmem.objectives.windowed_l2 import WindowedL2
    from refmem.retentions import LocalL2

    g = np.random.default_rng(66)
    M, D = xp.asarray(g.standard_normal((2, 3, 4))), xp.asarray(g.standard_normal((2, 3, 4)))
    K, V = xp.asarray(g.standard_normal((2, 5, 4))), xp.asarray(g.standard_normal((2, 5, 3)))
    gam = g.uniform(0, 1, size=(2, 5))
    gam[0, 1] = 0.0  # a zero weight is allowed (no G^{-1} in the SVD-basis form)
    obj = WindowedL2(xp.asarray(gam))
    h = 1e-3
    fd = (to_numpy(obj.value(M + h * D, K, V, xp)) - to_numpy(obj.value(M - h * D, K, V, xp))) / (2 * h)
    an = np.sum(to_numpy(obj.grad(M, K, V, xp)) * to_numpy(D), axis=(-2, -1))
    assert np.max(np.abs(fd - an)) <= 100 * EPS * np.max(np.abs(to_numpy(obj.value(M, K, V, xp)))) / h
    eta = xp.asarray(g.uniform(0.5, 2.0, size=(2,)))
    lvl = Level(obj, LocalL2(eta=eta), "implicit")
    Mc, _ = solve(lvl, M, K, V, method="closed")
    Mi, _ = solve(lvl, M, K, V, method="iterative")
    assert rel(Mi, to_numpy(Mc)) <= CLOSED_VS_ITERATIVE_TOL
    Mn, Kn, Vn, en = (to_numpy(a) for a in (M, K, V, eta))
    for n in range(2):
        A = np.eye(4) / en[n] + Kn[n].T @ (gam[n, :, None] * Kn[n])
        ref = np.linalg.solve(A, (Mn[n] / en[n] + Vn[n].T @ (gam[n, :, None] * Kn[n])).T).T
        assert rel(to_numpy(Mc)[n], ref) <= 20 * tol_same(5)  # condition of A <= 1 + eta sum gam ||k||^2 < 20 here
    with pytest.raises(ValueError, match="same number of samples"):
        solve(lvl, M, K, V[..., :4, :])
    with pytest.raises(ValueError, match=r"\[\.\.\., c, d_k\]"):
        solve(lvl, M, K[0, 0, :], V)
