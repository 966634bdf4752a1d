"""Optimisers declared as nested systems equal their direct implementations (refmem.optimizers.make) step for step."""

import numpy as np
import pytest

from conftest import to_numpy
from refmem.nested.optimizer_systems import adam_system, train_linear
from refmem.optimizers import make
from refmem.optimizers.local_surprise import weight_gradient

EPS = np.finfo(np.float64).eps


def _problem(seed=0, d_out=3, d_in=4, N=15):
    g = np.random.default_rng(seed)
    return (g.standard_normal((d_out, d_in)) / 2, g.standard_normal((N, d_in)), g.standard_normal((N, d_out)))


def _direct(name, W, X, T, **hp):
    opt = make(name, **hp)
    state = opt.init(W)
    out = [W]
    for i in range(X.shape[0]):
        W, state, _ = opt.step(W, weight_gradient("squared_error", W, X[i, ...], T[i, ...]), state)
        out.append(W)
    return out


@pytest.mark.parametrize("name, hp", [("adam", dict(lr=0.05)), ("adam", dict(lr=0.05, weight_decay=0.1)),
                                      ("adamw", dict(lr=0.05, weight_decay=0.1))])
def test_adam_declared_as_nested_system_equals_the_direct_implementation(xp, name, hp):
    W, X, T = _problem()
    system = adam_system(decoupled=(name == "adamw"), **hp)
    assert system.level_of == {"m": 1, "v": 1, "W": 2}
    got = train_linear(system, xp.asarray(W), xp.asarray(X), xp.asarray(T))
    want = _direct(name, xp.asarray(W), xp.asarray(X), xp.asarray(T), **hp)
    # the same operations in the same order: equal to rounding of the d = m/(sqrt(v)+eps) division
    # (relative 4 eps per step; Adam's steps are at most lr per entry): N * 4 eps * max|W| + N * lr * 4 eps
    tol = len(X) * 4 * EPS * (np.abs(to_numpy(want[-1])).max() + hp["lr"])
    err = max(np.abs(to_numpy(a) - to_numpy(b)).max() for a, b in zip(got, want))
    assert err <= tol, err


def test_adam_system_iterative_weights_level_agrees():
    W, X, T = _problem(1)
    a = train_linear(adam_system(lr=0.05), W, X, T)
    b = train_linear(adam_system(lr=0.05, method="iterative"), W, X, T)
    # the weights' level by CG to relative optimality 1e-12 (condition number 1), N steps
    assert max(np.abs(x - y).max() for x, y in zip(a, b)) <= len(X) * 1e-11 * max(1.0, np.abs(a[-1]).max())


def test_adam_diagram():
    text = adam_system().diagram()
    assert "level 1  m" in text and "level 1  v" in text and "level 2  W" in text
    assert "m --> W; v --> W" in text


def test_adam_system_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="lr"):
        adam_system(lr=0.0)
    with pytest.raises(ValueError, match="method"):
        adam_system(method="exact")
