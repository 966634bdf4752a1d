"""The linear / delta family: gated linear attention, the gated delta rule, Longhorn, the delta rule, DGD (MATH.md 5).

Each whole scan against an independent NumPy formula written here from the
mathematics (not by calling refmem), the identities between the family's
members, and input validation. Tolerances: ``memory_inputs``.
"""

import numpy as np
import pytest

from conftest import to_numpy
from memory_inputs import assert_check_passes, np_inputs, on, rel, tol_same
from refmem.losses import Loss
from refmem.memories import MEMORIES


# --- gated linear attention


def np_gla(q, k, v, alpha, M0):
    """Unrolled GLA: M_t = M_0 diag(A_{0,t}) + sum_{s<=t} v_s (A_{s,t} * k_s)^T, A_{s,t} = prod_{r=s+1..t} alpha_r."""
    T = k.shape[-2]
    a = alpha if alpha.ndim == k.ndim else np.broadcast_to(alpha[..., None], k.shape)  # (.., T, d_k)
    o = np.zeros(v.shape)
    for t in range(T):
        decay0 = np.prod(a[..., : t + 1, :], axis=-2)  # (.., d_k)
        M = M0 * decay0[..., None, :]
        for s in range(t + 1):
            A = np.prod(a[..., s + 1: t + 1, :], axis=-2)  # (.., d_k), empty product = 1
            M = M + v[..., s, :, None] * (A * k[..., s, :])[..., None, :]
        o[..., t, :] = np.einsum("...ij,...j->...i", M, q[..., t, :])
    return o, M


@pytest.mark.parametrize("per_channel", [False, True])
def test_gla_matches_unrolled_formula(xp, per_channel):
    inputs = np_inputs("gated_linear_attention", seed=2, per_channel=per_channel)
    M0 = np.random.default_rng(3).standard_normal((2, 3, 4))
    o, M = MEMORIES["gated_linear_attention"].recurrent(**on(xp, inputs), initial_state=xp.asarray(M0))
    o_ref, M_ref = np_gla(**inputs, M0=M0)
    assert rel(o, o_ref) <= tol_same(4, T=6)
    assert rel(M, M_ref) <= tol_same(4, T=6)


def test_gla_alpha_one_is_linear_attention(xp):
    from refmem.memories.gated_linear_attention import gated_linear_attention_recurrent
    from refmem.memories.linear_attention import linear_attention_recurrent

    assert_check_passes(xp, "gated_linear_attention", "alpha = 1 == linear attention")  # one gate per step
    inputs = on(xp, np_inputs("linear_attention", seed=8, T=9))
    ones = xp.ones(inputs["k"].shape, dtype=xp.float64)  # and one per key channel
    o1, M1 = gated_linear_attention_recurrent(**inputs, alpha=ones)
    o2, M2 = linear_attention_recurrent(**inputs)
    assert rel(o1, to_numpy(o2)) == 0.0 and rel(M1, to_numpy(M2)) == 0.0  # x * 1.0 is exact


def test_gla_zero_gate_forgets(xp):
    from refmem.memories.gated_linear_attention import gated_linear_attention_recurrent

    inputs = np_inputs("gated_linear_attention", seed=9, T=4)
    alpha = inputs["alpha"].copy()
    alpha[..., 2] = 0.0  # step 2 forgets everything before it
    M0 = np.random.default_rng(1).standard_normal((2, 3, 4))
    _, M = gated_linear_attention_recurrent(**on(xp, dict(inputs, alpha=alpha)), initial_state=xp.asarray(M0))
    tail = {n: a[..., 2:, :] if a.ndim == 3 else a[..., 2:] for n, a in dict(inputs, alpha=alpha).items()}
    _, M_tail = gated_linear_attention_recurrent(**on(xp, tail))
    assert rel(M, to_numpy(M_tail)) <= tol_same(4, T=2)


def test_gla_per_channel_gate_shape_error(xp):
    inputs = np_inputs("gated_linear_attention")
    bad = dict(inputs, alpha=np.ones((2, 6, 3)))  # d_v channels instead of d_k
    with pytest.raises(ValueError, match=r"alpha must have shape \(2, 6\).*\(2, 6, 4\)"):
        MEMORIES["gated_linear_attention"].recurrent(**on(xp, bad))


# --- gated delta rule


def np_gdr(q, k, v, alpha, beta, M0):
    """NumPy loop of M_t = a M - b (a M k - v) k^T written from MATH.md 5 (matrix form (aM)(I - b k k^T) + b v k^T)."""
    M = M0
    o = np.zeros(v.shape)
    d_k = k.shape[-1]
    for t in range(k.shape[-2]):
        kt = k[..., t, :]
        P = np.eye(d_k) - beta[..., t, None, None] * kt[..., :, None] * kt[..., None, :]  # (.., d_k, d_k)
        M = (alpha[..., t, None, None] * M) @ P + beta[..., t, None, None] * v[..., t, :, None] * kt[..., None, :]
        o[..., t, :] = (M @ q[..., t, :, None])[..., 0]
    return o, M


def test_gdr_matches_matrix_form(xp):
    inputs = np_inputs("gated_delta_rule", seed=21, T=8)
    M0 = np.random.default_rng(22).standard_normal((2, 3, 4))
    o, M = MEMORIES["gated_delta_rule"].recurrent(**on(xp, inputs), initial_state=xp.asarray(M0))
    o_ref, M_ref = np_gdr(**inputs, M0=M0)
    assert rel(o, o_ref) <= tol_same(4, T=8)
    assert rel(M, M_ref) <= tol_same(4, T=8)


def test_gdr_linearises_at_retained_state(xp):
    """Taking the gradient at M instead of a M is a different rule: the test can tell them apart."""
    from refmem import Level, solve
    from refmem.objectives import L2
    from refmem.retentions import ForgetGate

    inputs = np_inputs("gated_delta_rule", seed=23, T=1)
    inputs["alpha"][:] = 0.5
    M0 = np.random.default_rng(24).standard_normal((2, 3, 4))
    _, M = MEMORIES["gated_delta_rule"].recurrent(**on(xp, inputs), initial_state=xp.asarray(M0))
    at_state = Level(L2(), ForgetGate(eta=xp.asarray(inputs["beta"][..., 0]), alpha=0.5), "explicit")
    M_wrong, _ = solve(at_state, xp.asarray(M0), xp.asarray(inputs["k"][..., 0, :]), xp.asarray(inputs["v"][..., 0, :]))
    assert rel(M, to_numpy(M_wrong)) > 1e-3


def test_gdr_alpha_one_is_delta_rule(xp):
    from refmem.memories.delta_rule import delta_rule_recurrent

    inputs = on(xp, np_inputs("gated_delta_rule", seed=25, T=7))
    o1, M1 = MEMORIES["gated_delta_rule"].recurrent(**dict(inputs, alpha=xp.ones_like(inputs["alpha"])))
    o2, M2 = delta_rule_recurrent(inputs["q"], inputs["k"], inputs["v"], inputs["beta"])
    assert rel(o1, to_numpy(o2)) <= tol_same(4, T=7) and rel(M1, to_numpy(M2)) <= tol_same(4, T=7)


def test_gdr_beta_zero_only_decays(xp):
    inputs = np_inputs("gated_delta_rule", seed=26, T=5)
    inputs["beta"][:] = 0.0
    M0 = np.random.default_rng(27).standard_normal((2, 3, 4))
    _, M = MEMORIES["gated_delta_rule"].recurrent(**on(xp, inputs), initial_state=xp.asarray(M0))
    assert rel(M, np.prod(inputs["alpha"], axis=-1)[:, None, None] * M0) <= tol_same(1, T=5)


# --- Longhorn and the delta rule as an implicit step


def np_longhorn(q, k, v, beta, M0):
    """Each row of each step from its normal equations M_i (I/b_i + k k^T) = M_{t-1,i}/b_i + v_i k^T (np.linalg.solve)."""
    B, T, d_k = k.shape
    d_v = v.shape[-1]
    b = beta if beta.ndim == 3 else np.broadcast_to(beta[..., None], (B, T, d_v))
    M = M0.copy()
    o = np.zeros(v.shape)
    for n in range(B):
        for t in range(T):
            kt = k[n, t]
            for i in range(d_v):
                A = np.eye(d_k) / b[n, t, i] + np.outer(kt, kt)
                M[n, i] = np.linalg.solve(A, M[n, i] / b[n, t, i] + v[n, t, i] * kt)  # A symmetric
            o[n, t] = M[n] @ q[n, t]
    return o, M


@pytest.mark.parametrize("per_channel", [False, True])
def test_longhorn_matches_normal_equations(xp, per_channel):
    inputs = np_inputs("longhorn", seed=31, T=6, per_channel=per_channel)
    M0 = np.random.default_rng(32).standard_normal((2, 3, 4))
    o, M = MEMORIES["longhorn"].recurrent(**on(xp, inputs), initial_state=xp.asarray(M0))
    o_ref, M_ref = np_longhorn(**inputs, M0=M0)
    # LAPACK solve of a system with condition <= 1 + b ||k||^2 < 10: backward error ~ 10 d eps per step
    assert rel(o, o_ref) <= 10 * tol_same(4, T=6)
    assert rel(M, M_ref) <= 10 * tol_same(4, T=6)


def test_longhorn_equal_channels_equal_scalar(xp):
    inputs = np_inputs("longhorn", seed=33, T=5)
    wide = dict(inputs, beta=np.repeat(inputs["beta"][..., None], 3, axis=-1))
    o1, M1 = MEMORIES["longhorn"].recurrent(**on(xp, inputs))
    o2, M2 = MEMORIES["longhorn"].recurrent(**on(xp, wide))
    assert rel(o2, to_numpy(o1)) <= tol_same(4, T=5) and rel(M2, to_numpy(M1)) <= tol_same(4, T=5)


@pytest.mark.parametrize("per_channel", [False, True])
def test_longhorn_bounded_where_delta_diverges(xp, per_channel):
    """||M_t|| <= ||M_{t-1}|| + ||e o v|| ||k|| (each row contracted by I - e k k^T, 0 <= e||k||^2 < 1),
    while the explicit delta rule with the same unit keys and b = 3 (b ||k||^2 = 3 > 2) blows up."""
    from refmem.memories.delta_rule import delta_rule_recurrent

    g = np.random.default_rng(34)
    T = 60
    k = g.standard_normal((1, T, 4))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = g.standard_normal((1, T, 3))
    q = g.standard_normal((1, T, 4))
    beta = np.full((1, T, 3) if per_channel else (1, T), 3.0)
    if per_channel:
        beta[..., 1] = 50.0  # a very large step in one channel stays bounded too
    M = g.standard_normal((1, 3, 4))
    for t in range(T):
        step = [xp.asarray(a[:, t:t + 1]) for a in (q, k, v, beta)]
        _, M_next = MEMORIES["longhorn"].recurrent(*step, initial_state=xp.asarray(M))
        M_next = to_numpy(M_next)
        b = beta[:, t] if per_channel else beta[:, t, None]
        e = b / (1 + b)  # ||k|| = 1
        bound = np.linalg.norm(M) + np.linalg.norm(e * v[:, t])
        assert np.linalg.norm(M_next) <= bound * (1 + tol_same(4))
        M = M_next
    _, M_delta = delta_rule_recurrent(*(xp.asarray(a) for a in (q, k, v, np.full((1, T), 3.0))))
    assert np.linalg.norm(to_numpy(M_delta)) > 1e6 * np.linalg.norm(M)


def test_longhorn_residual_rates(xp):
    # hand derivation (refmem.checks.delta_family.longhorn_vs_delta_residuals): exactly 2^T and 4^-T
    assert_check_passes(xp, "longhorn", "bounded where the explicit delta rule diverges")


def test_delta_rule_unit_keys_is_implicit_step(xp):
    """MATH.md 5: ||k|| = 1, b in (0, 1): M - b r k^T == M - e r k^T with e = eta/(1 + eta), eta = b/(1-b)."""
    from refmem.memories.delta_rule import delta_rule_recurrent

    assert_check_passes(xp, "delta_rule", "unit keys, b in (0,1): explicit step == implicit step")
    g = np.random.default_rng(35)
    k = g.standard_normal((3, 9, 5))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    q, v = g.standard_normal((3, 9, 5)), g.standard_normal((3, 9, 2))
    b = g.uniform(0.01, 0.99, size=(3, 9))
    # with non-unit keys the identity fails (it needs ||k|| = 1)
    o3, _ = MEMORIES["longhorn"].recurrent(*(xp.asarray(a) for a in (q, 2 * k, v, b / (1 - b))))
    o4, _ = delta_rule_recurrent(*(xp.asarray(a) for a in (q, 2 * k, v, b)))
    assert rel(o3, to_numpy(o4)) > 1e-3


# --- DGD


class _Hebbian(Loss):
    """L(y; v) = -<y, v>, dL/dy = -v (test-only loss: with it the self-generated value is v itself)."""

    name = "hebbian"

    def _value(self, y, target, xp):
        return -xp.sum(y * target, axis=-1)

    def _grad(self, y, target, xp):
        return -target + 0 * y

    def _curvature(self, target, xp):
        return xp.zeros(target.shape[:-1], dtype=target.dtype)

    def _third(self, target, xp):
        return xp.zeros(target.shape[:-1], dtype=target.dtype)


def test_dgd_with_hebbian_loss_is_longhorn(xp):
    inputs = on(xp, np_inputs("dgd", seed=51, T=7))
    o1, M1 = MEMORIES["dgd"].recurrent(**inputs, loss=_Hebbian())
    o2, M2 = MEMORIES["longhorn"].recurrent(**inputs)
    assert rel(o1, to_numpy(o2)) <= tol_same(4, T=7) and rel(M1, to_numpy(M2)) <= tol_same(4, T=7)


def test_dgd_squared_error_fixed_point_is_half_value(xp):
    """Repeating one pair: M k - v/2 shrinks by (1 - 2 e ||k||^2) per step (hand derivation), so M k -> v/2."""
    g = np.random.default_rng(52)
    T = 40
    k1, v1 = g.standard_normal(4), g.standard_normal(3)
    k, v, q = np.tile(k1, (T, 1)), np.tile(v1, (T, 1)), g.standard_normal((T, 4))
    beta = np.full(T, 0.5)
    M0 = g.standard_normal((3, 4))
    _, M = MEMORIES["dgd"].recurrent(*(xp.asarray(a) for a in (q, k, v, beta)), initial_state=xp.asarray(M0))
    x = 0.5 * (k1 @ k1) / (1 + 0.5 * (k1 @ k1))  # e ||k||^2
    expected = (1 - 2 * x) ** T * (M0 @ k1 - v1 / 2) + v1 / 2
    # |1 - 2x| < 1 contracts rounding too: the error stays ~ d eps per step
    assert np.max(np.abs(to_numpy(M) @ k1 - expected)) <= tol_same(4, T=T) * np.max(np.abs(v1))


def test_dgd_softmax_cross_entropy_matches_numpy(xp):
    """Value u = p - (sum p) softmax(M k) written out in NumPy; the step is the normal-equation solve of np_longhorn."""
    inputs = np_inputs("dgd", seed=53, T=5)
    inputs["v"] = np.abs(inputs["v"])  # class weights >= 0
    M0 = np.random.default_rng(54).standard_normal((2, 3, 4))
    o, M = MEMORIES["dgd"].recurrent(**on(xp, inputs), loss="softmax_cross_entropy", initial_state=xp.asarray(M0))
    Mr = M0.copy()
    for t in range(5):
        y = np.einsum("bij,bj->bi", Mr, inputs["k"][:, t])
        s = np.exp(y - y.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        p = inputs["v"][:, t]
        u = p - p.sum(-1, keepdims=True) * s
        step = {n: inputs[n][:, t:t + 1] for n in ("q", "k", "beta")}
        _, Mr = np_longhorn(**step, v=u[:, None, :], M0=Mr)
    assert rel(M, Mr) <= 10 * tol_same(4, T=5)
    with pytest.raises(ValueError, match="target must lie in"):
        MEMORIES["dgd"].recurrent(**on(xp, dict(inputs, v=-inputs["v"])), loss="softmax_cross_entropy")
    with pytest.raises(ValueError, match="loss must be"):
        MEMORIES["dgd"].recurrent(**on(xp, inputs), loss="l7")
