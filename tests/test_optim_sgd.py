"""SGD with momentum, dampening and Nesterov (refmem.optimizers.sgd, specs/sgd.md).

The textbook is torch.optim.SGD's documented update, written plainly in NumPy here.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import CPU_BACKENDS
from optim_problems import NoisyQuadratic, max_rel, run

import refmem
from refmem.optimizers import make

EPS = np.finfo(np.float64).eps


def textbook_sgd(problem, T, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    W, b, out = problem.W0, None, [problem.W0]
    for t in range(T):
        g = problem.grad_np(W, t) + weight_decay * W
        if momentum != 0:
            b = g.copy() if b is None else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        W = W - lr * g
        out.append(W)
    return np.stack(out)


# Trajectory tolerance: both sides do the same few flops per entry per step (rounding <= 4 eps |step|), and the
# noisy quadratic's gradient map W -> W - target is 1-Lipschitz, so with lr * (1 + momentum) / (1 - momentum) < 1
# the accumulated difference stays below T * 8 eps * max|W| (a sane ceiling; the measured value is ~1e-16).
def trajectory_tol(T):
    return 8 * T * EPS


CASES = [dict(lr=0.05), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
         dict(lr=0.05, momentum=0.9, nesterov=True)]


@pytest.mark.parametrize("hp", CASES, ids=lambda hp: "-".join(f"{k}={v}" for k, v in hp.items()))
def test_sgd_equals_textbook_over_1000_steps(hp):
    prob = NoisyQuadratic(0, (2, 3, 4), 1000)
    ours = run(make("sgd", **hp), prob, np)
    assert max_rel(ours, textbook_sgd(prob, 1000, **hp)) <= trajectory_tol(1000)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("hp", CASES[1:], ids=lambda hp: "-".join(f"{k}={v}" for k, v in hp.items()))
def test_sgd_closed_equals_iterative(backend, hp):
    # each level's CG solve stops at relative optimality 1e-12 (Hessian I / eta, condition 1): per step <= 1e-12 relative
    xp = refmem.backends.get_backend(backend).namespace()
    T = 60 if backend == "numpy" else 20  # the strict backend is slow; the same code path
    prob = NoisyQuadratic(1, (3, 4), T)
    closed = run(make("sgd", **hp), prob, xp)
    it = run(make("sgd", **hp), prob, xp, method="iterative")
    assert max_rel(it, closed) <= T * 1e-12


@given(seed=st.integers(0, 2**32 - 1), lr=st.floats(0.001, 0.2), momentum=st.floats(0.0, 0.99),
       dampening=st.floats(0.0, 0.9), nesterov=st.booleans(), batch=st.sampled_from([(), (2,)]))
@settings(max_examples=20)
def test_sgd_property(seed, lr, momentum, dampening, nesterov, batch):
    if nesterov:
        momentum, dampening = max(momentum, 0.1), 0.0
    hp = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov)
    prob = NoisyQuadratic(seed, batch + (3, 2), 30)
    # the buffer sums past gradients with total weight up to 1/(1 - momentum): its rounding grows by that factor
    assert max_rel(run(make("sgd", **hp), prob, np), textbook_sgd(prob, 30, **hp)) <= trajectory_tol(30) * 10 / (1 - momentum)


def test_sgd_numpy_equals_strict():
    prob = NoisyQuadratic(2, (2, 3, 4), 50)
    hp = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)
    a = run(make("sgd", **hp), prob, np)
    with refmem.backend("array_api_strict") as xs:
        b = run(make("sgd", **hp), prob, xs)
    assert max_rel(a, b) <= 50 * 4 * EPS  # the same operations; only library rounding may differ


def test_sgd_bad_hyperparameters():
    with pytest.raises(ValueError, match="nesterov"):
        make("sgd", lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="nesterov"):
        make("sgd", lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="dampening"):
        make("sgd", lr=0.1, momentum=0.9, dampening=1.0)
    with pytest.raises(ValueError, match="momentum"):
        make("sgd", lr=0.1, momentum=1.5)
    with pytest.raises(TypeError, match="nesterov"):
        make("sgd", lr=0.1, momentum=0.9, nesterov=1)
