"""Preconditioned, delta and deep momentum (refmem.optimizers.preconditioned_momentum / delta_momentum / deep_momentum).

Independent routes: gradients by central finite differences of the objectives as printed, the updates
written plainly in NumPy, and the printed NL-22 evaluated by hand.
"""

import numpy as np
import pytest

from conftest import CPU_BACKENDS, to_numpy
from optim_problems import NoisyQuadratic, max_rel

import refmem
from refmem.level import ClosedFormUnavailable
from refmem.optimizers import deep_momentum as dm
from refmem.optimizers import delta_momentum as dl
from refmem.optimizers import make
from refmem.optimizers import preconditioned_momentum as pm

EPS = np.finfo(np.float64).eps


def central_difference(f, X, h=1e-6):
    G = np.zeros_like(X)
    for i in np.ndindex(X.shape):
        E = np.zeros_like(X)
        E[i] = h
        G[i] = (f(X + E) - f(X - E)) / (2 * h)
    return G


def spd(rng, d):
    A = rng.standard_normal((d, d))
    return A @ A.T / d + np.eye(d)


def run_with(opt, prob, xp, P=None, method="closed"):
    W = xp.asarray(prob.W0)
    state = opt.init(W) if P is None else opt.init(W, xp.asarray(P))
    out = [prob.W0]
    for t in range(prob.T):
        W, state, _ = opt.step(W, prob.grad(W, t, xp), state, method=method)
        out.append(to_numpy(W))
    return np.stack(out)


# ----------------------------------------------------------------- preconditioned momentum


def test_preconditioned_objective_gradient_is_P_g():
    rng = np.random.default_rng(0)
    m, g, P = rng.standard_normal((3, 2)), rng.standard_normal((3, 2)), rng.standard_normal((3, 3))
    fd = central_difference(lambda x: np.sum((x @ g.T) * P), m)  # <m g^T, P> as printed
    assert np.abs(fd - P @ g).max() <= 1e-8  # central differences of a linear function: rounding only


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_preconditioned_momentum_equals_textbook_and_iterative(backend):
    xp = refmem.backends.get_backend(backend).namespace()
    rng = np.random.default_rng(1)
    T = 200 if backend == "numpy" else 30  # the strict backend is slow; the same code path
    prob = NoisyQuadratic(1, (4, 3), T)
    P = spd(rng, 4)
    opt = make("preconditioned_momentum", lr=0.05, momentum=0.8)
    closed = run_with(opt, prob, xp, P)
    W, m, ref = prob.W0, np.zeros((4, 3)), [prob.W0]
    for t in range(T):
        m = 0.8 * m - 0.05 * P @ prob.grad_np(W, t)  # NL-21
        W = W + m
        ref.append(W)
    assert max_rel(closed, np.stack(ref)) <= T * 16 * EPS  # the same few flops per step; 1-Lipschitz gradient
    it = run_with(opt, prob, xp, P, method="iterative")
    assert max_rel(it, closed) <= T * 1e-12  # CG at relative optimality 1e-12, condition 1


def test_identity_preconditioner_is_plain_momentum():
    prob = NoisyQuadratic(2, (2, 3, 2), 50)
    a = run_with(make("preconditioned_momentum", lr=0.05, momentum=0.9), prob, np)
    W, m, ref = prob.W0, 0 * prob.W0, [prob.W0]
    for t in range(50):
        m = 0.9 * m - 0.05 * prob.grad_np(W, t)
        W = W + m
        ref.append(W)
    assert max_rel(a, np.stack(ref)) <= 50 * 16 * EPS


# ----------------------------------------------------------------- delta momentum


def test_delta_objective_gradient_by_finite_differences():
    rng = np.random.default_rng(3)
    m, g, P = rng.standard_normal((3, 2)), rng.standard_normal((3, 2)), rng.standard_normal((3, 3))
    fd = central_difference(lambda x: 0.5 * np.sum((x @ g.T - P) ** 2), m)
    # central differences of a quadratic are exact up to rounding: ~ eps |f| / h
    assert np.abs(fd - dl.objective_gradient(m, g, P)).max() <= 1e-7


@pytest.mark.parametrize("step", ["explicit", "implicit"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_delta_momentum_closed_equals_iterative_and_textbook(backend, step):
    xp = refmem.backends.get_backend(backend).namespace()
    rng = np.random.default_rng(4)
    T = 150 if backend == "numpy" else 30  # the strict backend is slow; the same code path
    prob = NoisyQuadratic(4, (3, 2), T, noise=0.2)
    P = spd(rng, 3)
    opt = make("delta_momentum", lr=0.05, momentum=0.9, step=step)
    closed = run_with(opt, prob, xp, P)
    W, m, ref = prob.W0, np.zeros((3, 2)), [prob.W0]
    for t in range(T):
        g = prob.grad_np(W, t)
        if step == "explicit":
            m = m @ (0.9 * np.eye(2) - 0.05 * g.T @ g) + 0.05 * P @ g  # the consistent step
        else:
            m = np.linalg.solve((np.eye(2) + 0.05 * g.T @ g).T, (0.9 * m + 0.05 * P @ g).T).T
        W = W - m
        ref.append(W)
    assert max_rel(closed, np.stack(ref)) <= T * 32 * EPS
    it = run_with(opt, prob, xp, P, method="iterative")
    # CG stops at relative optimality 1e-12; implicit step's condition number 1 + lr ||g||^2 < 2 here
    assert max_rel(it, closed) <= T * 2e-12


def test_delta_explicit_step_is_the_gradient_step_on_the_printed_objective():
    rng = np.random.default_rng(5)
    m, g, P = rng.standard_normal((3, 2)), rng.standard_normal((3, 2)), rng.standard_normal((3, 3))
    lr, alpha = 0.1, 0.9
    fd = central_difference(lambda x: 0.5 * np.sum((x @ g.T - P) ** 2), m)
    step, _ = dl.momentum_step(m, g, P, lr, alpha, "explicit")
    assert np.abs(step - (alpha * m - lr * fd)).max() <= 1e-7 * lr


def test_nl22_as_printed_differs_from_the_consistent_step():
    rng = np.random.default_rng(6)
    m, g, P = rng.standard_normal((3, 2)), rng.standard_normal((3, 2)), spd(rng, 3)
    lr, alpha = 0.1, 0.9
    printed = dl.nl22_printed_step(m, g, P, lr, alpha)
    consistent, _ = dl.momentum_step(m, g, P, lr, alpha, "explicit")
    # by hand: consistent - printed = (1 - lr) m g^T g + 2 lr P g
    predicted = (1 - lr) * m @ g.T @ g + 2 * lr * P @ g
    assert np.abs((consistent - printed) - predicted).max() <= 64 * EPS * np.abs(predicted).max()
    assert np.abs(predicted).max() > 0.1
    # for column vectors the printed left product (alpha I - g^T g) m equals the right product (scalar g^T g)
    v, w = rng.standard_normal((3, 1)), rng.standard_normal((3, 1))
    left = (alpha * np.eye(1) - w.T @ w) @ v.T  # the print's order on the transposed (1 x 3) reading
    assert np.abs(dl.nl22_printed_step(v, w, P, lr, alpha) - (left.T - lr * P @ w)).max() <= 16 * EPS


# ----------------------------------------------------------------- deep momentum (DMGD)


def test_deep_momentum_gradients_by_finite_differences():
    rng = np.random.default_rng(7)
    A1, A2, u = rng.standard_normal((5, 3)), rng.standard_normal((3, 5)), rng.standard_normal((4, 3))
    dA1, dA2 = dm.memory_objective_gradient(A1, A2, u)
    f = lambda a1, a2: float(np.sum(np.tanh(u @ a1.T) @ a2.T * u))  # <m(u), u> written out  # noqa: E731
    # central differences of a smooth function: error ~ h^2 |f'''| + eps |f| / h ~ 1e-10 at h = 1e-6
    assert np.abs(dA1 - central_difference(lambda a: f(a, A2), A1)).max() <= 1e-8
    assert np.abs(dA2 - central_difference(lambda a: f(A1, a), A2)).max() <= 1e-8


def test_deep_momentum_equals_a_plain_loop_with_finite_difference_gradients():
    prob = NoisyQuadratic(8, (3, 4), 30)
    opt = make("deep_momentum", lr=0.05, momentum=0.9, hidden=5)
    W = prob.W0
    state = opt.init(W)
    A1, A2 = state.A1.copy(), state.A2.copy()
    Wr, out, ref = W, [W], [W]
    for t in range(30):
        W, state, reps = opt.step(W, prob.grad_np(W, t), state, method="iterative")
        out.append(W)
        u = prob.grad_np(Wr, t)
        f = lambda a1, a2: float(np.sum(np.tanh(u @ a1.T) @ a2.T * u))  # noqa: E731
        g1 = central_difference(lambda a: f(a, A2), A1)
        g2 = central_difference(lambda a: f(A1, a), A2)
        A1, A2 = 0.9 * A1 - 0.05 * g1, 0.9 * A2 - 0.05 * g2
        Wr = Wr + np.tanh(u @ A1.T) @ A2.T
        ref.append(Wr)
    assert reps["momentum"].method == "iterative"
    # finite-difference gradients are accurate to ~1e-9; 30 steps of a contraction-free loop: 1e-6 is a sane ceiling
    assert np.abs(np.stack(out) - np.stack(ref)).max() <= 1e-6


def test_deep_momentum_has_no_closed_form(xp):
    opt = make("deep_momentum")
    W = xp.ones((2, 3), dtype=xp.float64)
    with pytest.raises(ClosedFormUnavailable, match="iterative"):
        opt.step(W, W, opt.init(W))
    with pytest.raises(ClosedFormUnavailable):
        opt.step(W, W, opt.init(W), method="closed")


def test_deep_momentum_numpy_equals_strict():
    prob = NoisyQuadratic(9, (2, 3, 4), 20)
    opt = make("deep_momentum", lr=0.05, hidden=4)
    a = run_with(opt, prob, np, method="iterative")
    with refmem.backend("array_api_strict") as xs:
        b = run_with(opt, prob, xs, method="iterative")
    assert max_rel(a, b) <= 20 * 64 * EPS


def test_bad_inputs():
    W = np.ones((3, 2))
    with pytest.raises(ValueError, match="preconditioner"):
        make("preconditioned_momentum").init(W, np.eye(2))
    with pytest.raises(ValueError, match="step"):
        make("delta_momentum", step="newton")
    with pytest.raises(ValueError, match="hidden"):
        make("deep_momentum", hidden=0)
    with pytest.raises(TypeError, match="preconditioner"):
        make("delta_momentum").init(W, [[1.0]])
