"""Adam, AdamW, RMSProp and AdaGrad as optimal memories (refmem.optimizers.adam / rmsprop / adagrad / moment_memory).

Textbook updates are torch.optim's documented algorithms, written plainly in NumPy here.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import CPU_BACKENDS, to_numpy
from optim_problems import NoisyQuadratic, max_rel, run

import refmem
from refmem.optimizers import make
from refmem.optimizers import moment_memory as mm

EPS = np.finfo(np.float64).eps


def textbook_adam(problem, T, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    b1, b2 = betas
    W, m, v, out = problem.W0, 0 * problem.W0, 0 * problem.W0, [problem.W0]
    for t in range(1, T + 1):
        g = problem.grad_np(W, t - 1)
        if decoupled:
            W = W * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * W
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        W = W - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append(W)
    return np.stack(out)


def textbook_rmsprop(problem, T, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
    W = problem.W0
    v, gbar, b, out = 0 * W, 0 * W, 0 * W, [W]
    for t in range(T):
        g = problem.grad_np(W, t) + weight_decay * W
        v = alpha * v + (1 - alpha) * g * g
        if centered:
            gbar = alpha * gbar + (1 - alpha) * g
            avg = np.sqrt(v - gbar * gbar) + eps
        else:
            avg = np.sqrt(v) + eps
        if momentum > 0:
            b = momentum * b + g / avg
            W = W - lr * b
        else:
            W = W - lr * g / avg
        out.append(W)
    return np.stack(out)


def textbook_adagrad(problem, T, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10):
    W = problem.W0
    s, out = 0 * W + initial_accumulator_value, [W]
    for t in range(1, T + 1):
        g = problem.grad_np(W, t - 1) + weight_decay * W
        clr = lr / (1 + (t - 1) * lr_decay)
        s = s + g * g
        W = W - clr * g / (np.sqrt(s) + eps)
        out.append(W)
    return np.stack(out)


CASES = {
    "adam": (dict(lr=1e-2, weight_decay=0.1), lambda p, T: textbook_adam(p, T, lr=1e-2, weight_decay=0.1)),
    "adamw": (dict(lr=1e-2, weight_decay=0.1),
              lambda p, T: textbook_adam(p, T, lr=1e-2, weight_decay=0.1, decoupled=True)),
    "rmsprop": (dict(lr=1e-2, momentum=0.5, centered=True, weight_decay=0.01),
                lambda p, T: textbook_rmsprop(p, T, lr=1e-2, momentum=0.5, centered=True, weight_decay=0.01)),
    "adagrad": (dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.01),
                lambda p, T: textbook_adagrad(p, T, lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1,
                                              weight_decay=0.01)),
}

# Trajectory tolerance over T steps: both sides compute the same moments with the same few flops per entry
# (rounding <= 8 eps relative per step, the bias correction's division ordered differently); the noisy
# quadratic's gradient W - target is 1-Lipschitz and the steps are small (lr <= 0.1), so differences add up
# at most linearly: T * 16 eps relative (a sane ceiling; measured values are ~1e-15).
def trajectory_tol(T):
    return 16 * T * EPS


@pytest.mark.parametrize("name", sorted(CASES))
def test_equals_textbook_over_1000_steps(name):
    hp, textbook = CASES[name]
    prob = NoisyQuadratic(0, (2, 3, 4), 1000)
    assert max_rel(run(make(name, **hp), prob, np), textbook(prob, 1000)) <= trajectory_tol(1000)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_closed_equals_iterative(backend, name):
    # The iterative moments minimise the least-squares memory over the stored history by CG (Hessian a multiple
    # of I: one step, stopping at relative optimality 1e-12); the weights' level likewise. 1e-12 per step, linear.
    xp = refmem.backends.get_backend(backend).namespace()
    hp, _ = CASES[name]
    T = 80 if backend == "numpy" else 20  # the strict backend is slow; the same code path
    prob = NoisyQuadratic(1, (2, 3), T)
    closed = run(make(name, **hp), prob, xp)
    it = run(make(name, **hp), prob, xp, method="iterative")
    assert max_rel(it, closed) <= T * 1e-12


@given(seed=st.integers(0, 2**32 - 1), b1=st.floats(0.0, 0.99), b2=st.floats(0.5, 0.9999),
       lr=st.floats(1e-4, 0.05), wd=st.floats(0.0, 0.5), decoupled=st.booleans())
@settings(max_examples=15)
def test_adam_property(seed, b1, b2, lr, wd, decoupled):
    prob = NoisyQuadratic(seed, (3, 2), 40)
    name = "adamw" if decoupled else "adam"
    hp = dict(lr=lr, betas=(b1, b2), weight_decay=wd)
    ref = textbook_adam(prob, 40, lr=lr, betas=(b1, b2), weight_decay=wd, decoupled=decoupled)
    assert max_rel(run(make(name, **hp), prob, np), ref) <= trajectory_tol(40)


def test_numpy_equals_strict():
    prob = NoisyQuadratic(2, (2, 3, 4), 40)
    for name, (hp, _) in CASES.items():
        a = run(make(name, **hp), prob, np)
        with refmem.backend("array_api_strict") as xs:
            b = run(make(name, **hp), prob, xs)
        assert max_rel(a, b) <= 40 * 8 * EPS, name  # the same operations in the same order


# ---------------------------------------------------------------- the moment memories themselves


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.999])
def test_bias_corrected_moment_is_the_discounted_least_squares_minimiser(xp, beta):
    rng = np.random.default_rng(7)
    ys = [rng.standard_normal((3, 4)) for _ in range(25)]
    # independent: the weighted mean sum_s beta^(t-s) y_s / sum_s beta^(t-s), with fsum per entry
    w = [beta ** (25 - s) for s in range(1, 26)]
    ref = np.array([[math.fsum(wi * y[i, j] for wi, y in zip(w, ys)) / math.fsum(w) for j in range(4)] for i in range(3)])
    m = xp.zeros((3, 4), dtype=xp.float64)
    for y in ys:
        m = mm.ema_step(m, xp.asarray(y), beta)
    closed = to_numpy(mm.bias_corrected(m, beta, 25))
    it, rep = mm.discounted_least_squares_argmin(tuple(xp.asarray(y) for y in ys), beta)
    assert rep.converged
    assert np.abs(closed - ref).max() <= 64 * EPS * np.abs(ref).max() / (1 - beta) ** 0 * 25
    assert np.abs(to_numpy(it) - ref).max() <= 1e-12 * max(np.abs(ref).max(), 1.0)


def test_uncorrected_average_is_the_memory_with_a_zero_prehistory():
    # RMSProp's v_t = (1 - a) sum a^(t-s) y_s minimises the memory with weight a^t / (1 - a) on ||x||^2
    rng = np.random.default_rng(8)
    a, ys = 0.9, [rng.standard_normal((2, 3)) for _ in range(12)]
    v = np.zeros((2, 3))
    for y in ys:
        v = a * v + (1 - a) * y
    x, _ = mm.discounted_least_squares_argmin(tuple(ys), a, zero_prehistory=True)
    assert np.abs(x - v).max() <= 1e-12 * np.abs(v).max()
    # ... and the bias correction is the only difference to the memory without that past
    x0, _ = mm.discounted_least_squares_argmin(tuple(ys), a)
    assert np.abs(x0 - v / (1 - a ** 12)).max() <= 1e-12 * np.abs(x0).max()
    assert np.abs(x0 - v).max() > 0.1 * np.abs(v).max()  # with only 12 steps the zero past still weighs 0.9^12 = 28%


def test_paper_plain_sums_give_the_mean_not_adams_moment():
    # plain sums (beta = 1): the minimiser is the arithmetic mean; Adam's moment at beta = 0.9 differs,
    # and approaches the mean as beta -> 1 (the claim's limit)
    rng = np.random.default_rng(9)
    ys = [rng.standard_normal((2, 2)) + 0.1 * s for s in range(30)]  # a drifting gradient
    mean = np.mean(ys, axis=0)
    plain, _ = mm.plain_sum_argmin(tuple(ys))
    assert np.abs(plain - mean).max() <= 1e-12 * np.abs(mean).max()

    def adam_moment(beta):
        m = np.zeros((2, 2))
        for y in ys:
            m = beta * m + (1 - beta) * y
        return m / (1 - beta ** 30)

    gaps = [np.abs(adam_moment(b) - mean).max() for b in (0.9, 0.99, 0.999, 0.9999)]
    assert gaps[0] > 0.5  # the recent gradients dominate Adam's moment
    assert all(b < a for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 1e-2 * gaps[0]


def test_iterative_needs_the_history(xp):
    opt = make("adam", lr=0.1)
    W = xp.ones((2, 2), dtype=xp.float64)
    s = opt.init(W, keep_history=False)
    W1, s, _ = opt.step(W, W, s)  # closed form needs no history
    with pytest.raises(ValueError, match="keep_history"):
        opt.step(W1, W, s, method="iterative")


def test_zero_gradient_with_eps_zero_is_a_divergence_error(xp):
    opt = make("adam", lr=0.1, eps=0.0)
    W = xp.ones((2, 2), dtype=xp.float64)
    with pytest.raises(refmem.validation.DivergenceError, match="adam.*eps"):
        opt.step(W, 0 * W, opt.init(W))


def test_bad_hyperparameters():
    with pytest.raises(TypeError, match="betas"):
        make("adam", betas=0.9)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        make("adam", betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps"):
        make("adam", eps=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        make("adamw", lr=1.0, weight_decay=2.0)
    with pytest.raises(ValueError, match="alpha"):
        make("rmsprop", alpha=1.0)
    with pytest.raises(ValueError, match="lr_decay"):
        make("adagrad", lr_decay=-0.1)
    with pytest.raises(TypeError, match="amsgrad"):
        make("adam", amsgrad=True)


def test_adam_moments_vector_entry_point(xp):
    from refmem.optimizers import vector_cases as vc

    inputs = vc.adamw_make_inputs(5, (2,), 30, 4, 3, xp)
    x = inputs.pop("x")
    m_hat, v_hat, W = (to_numpy(a) for a in vc.adam_moments_vectors(x, **inputs))
    g, W_t = to_numpy(x), to_numpy(inputs["W0"])
    m = v = np.zeros_like(W_t)
    for t in range(30):  # AdamW written out, the moments bias-corrected by hand
        gt = g[:, t]
        m, v = 0.9 * m + 0.1 * gt, 0.999 * v + 0.001 * gt * gt
        mh, vh = m / (1 - 0.9 ** (t + 1)), v / (1 - 0.999 ** (t + 1))
        W_t = W_t * (1 - 1e-2 * 1e-2) - 1e-2 * mh / (np.sqrt(vh) + 1e-8)
        assert np.abs(m_hat[:, t] - mh).max() <= 8 * EPS * np.abs(mh).max()
        assert np.abs(v_hat[:, t] - vh).max() <= 8 * EPS * np.abs(vh).max()
        assert np.abs(W[:, t] - W_t).max() <= 16 * (t + 1) * EPS * np.abs(W_t).max()


def test_centered_rmsprop_variance_rounding_is_not_nan():
    # a constant gradient: v - gbar^2 = alpha^t (1 - alpha^t) g^2 vanishes; rounding may make it negative
    opt = make("rmsprop", lr=1e-3, centered=True, alpha=0.5, eps=1e-3)
    W = np.ones((2, 2))
    state = opt.init(W, keep_history=False)
    for _ in range(80):
        # g = 0.7 + 0 W: at this value the rounded v - gbar^2 goes negative (-5.6e-17) after about 50 steps
        W, state, _ = opt.step(W, np.full((2, 2), 0.7) + 0 * W, state)
    assert np.all(np.isfinite(W))
    v, gbar = state.square_avg, state.grad_avg
    assert np.all(np.abs(v - gbar * gbar) <= 1e-15)  # the variance has vanished to rounding
