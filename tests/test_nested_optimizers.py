"""Optimisers declared as nested systems equal their direct implementations (refmem.optimizers.make) step for step."""

import numpy as np
import pytest

from conftest import to_numpy
from refmem.nested.optimizer_systems import adam_system, m3_system, train_linear, train_m3
from refmem.optimizers import make
from refmem.optimizers.local_surprise import weight_gradient

EPS = np.finfo(np.float64).eps


def _problem(seed=0, d_out=3, d_in=4, N=15, batch=()):
    g = np.random.default_rng(seed)
    return (g.standard_normal((d_out, d_in)) / 2, g.standard_normal((N,) + batch + (d_in,)),
            g.standard_normal((N,) + batch + (d_out,)))


def _direct(name, W, X, T, **hp):
    opt = make(name, **hp)
    state = opt.init(W)
    out = [W]
    for i in range(X.shape[0]):
        g = weight_gradient("squared_error", W, X[i, ...], T[i, ...])  # one sample, or (B, d_out, d_in)
        W, state, _ = opt.step(W, g if X.ndim == 2 else sum(g[b, ...] for b in range(g.shape[0])) / g.shape[0], state)
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


@pytest.mark.parametrize("orthogonalize", ["polar", "cubic"])
def test_m3_declared_as_nested_system_equals_the_direct_implementation(xp, orthogonalize):
    W, X, T = _problem(2, N=13, batch=(6,))  # minibatches: one sample's gradient has rank one
    hp = dict(lr=0.02, betas=(0.5, 0.3, 0.4), alpha=0.5, eps=1e-3, frequency=4, orthogonalize=orthogonalize)
    system = m3_system(**hp)
    got = train_m3(system, xp.asarray(W), xp.asarray(X), xp.asarray(T))
    want = _direct("m3", xp.asarray(W), xp.asarray(X), xp.asarray(T), **hp)
    # the same level functions in the same order: the trajectories agree to the rounding of the
    # preconditioned direction (4 eps relative per step, steps of at most lr (1 + alpha) / eps per entry)
    scale = np.abs(to_numpy(want[-1])).max() + hp["lr"] * (1 + hp["alpha"]) / hp["eps"]
    err = max(np.abs(to_numpy(a) - to_numpy(b)).max() for a, b in zip(got, want))
    assert err <= len(X) * 4 * EPS * scale, err


def test_m3_levels_and_diagram():
    system = m3_system(frequency=5)
    assert system.level_of == {"M1": 1, "V": 1, "O1": 2, "W": 3, "M2": 4, "O2": 5}
    text = system.diagram()
    assert "every 5 steps" in text and "O2 (previous step)" in text and "summed over its chunk: g" in text
