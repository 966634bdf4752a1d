"""Losses and their hand-written ``dL/dy`` (refmem.losses), on both CPU backends.

The gradients are checked against central finite differences with the
derived bound of :func:`refmem.losses.finite_difference_surprise`
(truncation ``h^2/6 * max|f'''|`` + rounding ``delta/h``); the values against
SciPy (an independent implementation of log-sum-exp).
"""

import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

import refmem
from conftest import CPU_BACKENDS, to_numpy
from refmem.losses import LOSSES, SoftmaxCrossEntropy, SquaredError, finite_difference_surprise, get_loss
from refmem.metrics import max_abs_error

EPS = np.finfo(np.float64).eps


def ns(name):
    """The namespace of backend ``name`` (property tests take the backend as a parameter, not the fixture)."""
    return refmem.backends.get_backend(name).namespace()


def _draw(seed, batch, d, scale, loss_name):
    g = np.random.default_rng(seed)
    y = scale * g.standard_normal(batch + (d,))
    if loss_name == "softmax_cross_entropy":
        t = g.uniform(0.0, 2.0, size=batch + (d,)) * (g.random(batch + (d,)) < 0.7)  # non-negative class weights, some zero
    else:
        t = scale * g.standard_normal(batch + (d,))
    return y, t


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@given(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 7), batch=st.sampled_from([(), (3,), (2, 2)]),
       scale=st.floats(min_value=0.01, max_value=20.0, allow_nan=False))
@settings(max_examples=15)
def test_grad_matches_finite_differences(backend, loss_name, seed, d, batch, scale):
    xp = ns(backend)
    y_np, t_np = _draw(seed, batch, d, scale, loss_name)
    y, t = xp.asarray(y_np), xp.asarray(t_np)
    loss = get_loss(loss_name)
    u = loss.grad(y, t)
    u_fd, bound = finite_difference_surprise(loss, y, t)
    err = np.max(np.abs(to_numpy(u) - to_numpy(u_fd)), axis=-1)  # per batch element
    # bound: derived FD truncation + rounding, per batch element (see finite_difference_surprise)
    assert np.all(err <= to_numpy(bound)), (err, to_numpy(bound))
    assert type(u) is type(y) and tuple(u.shape) == tuple(y.shape)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 7), scale=st.floats(min_value=0.01, max_value=50.0, allow_nan=False))
def test_cross_entropy_value_matches_scipy(backend, seed, d, scale):
    xp = ns(backend)
    y_np, t_np = _draw(seed, (4,), d, scale, "softmax_cross_entropy")
    L = to_numpy(SoftmaxCrossEntropy().value(xp.asarray(y_np), xp.asarray(t_np)))
    ref = -np.sum(t_np * scipy.special.log_softmax(y_np, axis=-1), axis=-1)  # independent: SciPy's log-softmax
    # each of d terms p_i * log_softmax_i has relative rounding ~ eps(|y| + log d); 16 d eps * sum |terms| covers both sums
    tol = 16 * (d + 2) * EPS * (np.sum(t_np * (np.abs(y_np) + np.log(d) + 1), axis=-1) + 1)
    assert np.all(np.abs(L - ref) <= tol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 7), scale=st.floats(min_value=0.01, max_value=50.0, allow_nan=False))
def test_squared_error_value_by_hand(backend, seed, d, scale):
    xp = ns(backend)
    y_np, t_np = _draw(seed, (3,), d, scale, "squared_error")
    L = to_numpy(SquaredError().value(xp.asarray(y_np), xp.asarray(t_np)))
    ref = 0.5 * np.array([sum((a - b) ** 2 for a, b in zip(yr, tr)) for yr, tr in zip(y_np, t_np)])  # Python loop
    assert np.all(np.abs(L - ref) <= 4 * (d + 2) * EPS * ref + 1e-300)  # sum of d non-negative terms: (d+2) eps relative


def test_cross_entropy_gradient_of_a_distribution_sums_to_zero(xp):
    # Hand derivation: u = (sum p) s - p, so sum(u) = sum(p) - sum(p) = 0 when the weights form a distribution.
    g = np.random.default_rng(3)
    y = g.standard_normal((5, 6))
    p = g.dirichlet(np.ones(6), size=5)
    u = to_numpy(SoftmaxCrossEntropy().grad(xp.asarray(y), xp.asarray(p)))
    assert np.max(np.abs(u.sum(-1))) <= 8 * 6 * EPS  # sum of 6 terms of size <= 1


def test_cross_entropy_is_stable_for_large_logits(xp):
    # Without the max-shift exp(1000) overflows; the shifted form gives lse(y) = 1000 + log(1 + e^-1) exactly enough.
    y = xp.asarray([[1000.0, 999.0]])
    p = xp.asarray([[0.0, 1.0]])
    L = float(to_numpy(SoftmaxCrossEntropy().value(y, p))[0])
    assert abs(L - np.log1p(np.exp(1.0))) <= 1e3 * EPS * 8  # L = lse - y_2 = 1 + log(1 + e^-1) = log(1 + e); rounding ~ eps*1000
    u = to_numpy(SoftmaxCrossEntropy().grad(y, p))
    s1 = 1.0 / (1.0 + np.exp(-1.0))
    assert np.max(np.abs(u - np.array([[s1, (1.0 - s1) - 1.0]]))) <= 4 * EPS  # u = softmax - p = (s1, 1 - s1) - (0, 1)


def test_curvature_bounds_the_hessian(xp):
    # Hessian by central differences of the (FD-checked) gradient; its spectral norm must not exceed curvature().
    g = np.random.default_rng(5)
    for loss in (SquaredError(), SoftmaxCrossEntropy()):
        for _ in range(5):
            y = g.standard_normal(4) * 3
            t = g.random(4)
            h = 1e-6
            H = np.stack([(to_numpy(loss.grad(xp.asarray(y + h * e), xp.asarray(t)))
                           - to_numpy(loss.grad(xp.asarray(y - h * e), xp.asarray(t)))) / (2 * h) for e in np.eye(4)])
            c = float(to_numpy(loss.curvature(xp.asarray(t))))
            # FD Hessian error: h^2/6 * |f''''| (<= 1 * sum p) + 4 eps / h per entry; times 4 for the 2-norm of a 4x4 error
            assert np.linalg.norm(H, 2) <= c + 4 * (h * h * t.sum() + 4 * EPS / h)


def test_third_derivative_bound_is_the_maximum_of_s_1ms_1m2s():
    # Along a coordinate d^3 lse = s(1-s)(1-2s); its maximum modulus over s in [0, 1] is 1/(6 sqrt 3).
    s = np.linspace(0.0, 1.0, 2_000_001)
    grid_max = np.max(np.abs(s * (1 - s) * (1 - 2 * s)))
    bound = float(SoftmaxCrossEntropy().third_derivative_bound(np.ones((1,))))
    assert grid_max <= bound and bound - grid_max <= 1e-12  # grid step 5e-7: the cubic's max is missed by O(step^2)


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_bad_inputs(xp, loss_name):
    loss = get_loss(loss_name)
    y = xp.asarray([[0.1, 0.2, 0.3]])
    t = xp.asarray([[0.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match="target"):
        loss.value(y, xp.asarray([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="y"):
        loss.grad(xp.asarray([[0.1, float("nan"), 0.3]]), t)
    with pytest.raises(TypeError, match="dtype"):
        loss.grad(y, xp.asarray([[0.0, 1.0, 0.0]], dtype=xp.float32))
    with pytest.raises(TypeError, match="y"):
        loss.value([0.1, 0.2, 0.3], t)
    with pytest.raises(ValueError, match="y"):
        loss.value(xp.asarray(1.0), xp.asarray(1.0))
    with pytest.raises(ValueError, match="h"):
        finite_difference_surprise(loss, y, t, h=0.0)


def test_cross_entropy_rejects_negative_weights(xp):
    with pytest.raises(ValueError, match="target"):
        SoftmaxCrossEntropy().grad(xp.asarray([0.1, 0.2]), xp.asarray([-0.5, 1.5]))


def test_mixed_backends_rejected():
    import array_api_strict as xs

    with pytest.raises(TypeError):
        SquaredError().value(np.zeros(3), xs.asarray([0.0, 0.0, 0.0]))


def test_get_loss_unknown_name():
    with pytest.raises(ValueError, match="loss"):
        get_loss("hinge")
    assert isinstance(get_loss("squared_error"), SquaredError)


def test_max_abs_error_agrees_for_float32(xp):
    # float32 runs: the FD bound scales with eps32 and a larger h (eps^(1/3) balance); the gradient still agrees.
    g = np.random.default_rng(11)
    y = xp.asarray(g.standard_normal((3, 5)), dtype=xp.float32)
    t = xp.asarray(g.random((3, 5)), dtype=xp.float32)
    for loss in (SquaredError(), SoftmaxCrossEntropy()):
        u = loss.grad(y, t)
        u_fd, bound = finite_difference_surprise(loss, y, t, h=1e-2)
        assert u.dtype == xp.float32
        assert max_abs_error(u, u_fd, xp) <= float(xp.max(bound))
