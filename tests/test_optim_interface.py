"""One interface for every optimiser in OPTIMIZERS (refmem.optimizers.make, refmem.optimizers.optimizer).

Every registered optimiser: init/step on a matrix and on a batch of matrices, on both CPU backends, with
the reports of its levels; float32 runs in float32; bad input is a clear error naming the argument.
"""

import numpy as np
import pytest

from conftest import CPU_BACKENDS, to_numpy

import refmem
from refmem.optimizers import OPTIMIZERS, make
from refmem.validation import DivergenceError

# hyperparameters that keep every optimiser well defined on the random problems below
HP = {"m3": dict(frequency=2), "muon": dict(lr=0.02), "deep_momentum": dict(hidden=3)}
ITERATIVE_ONLY = {"deep_momentum"}


def method_of(name):
    return "iterative" if name in ITERATIVE_ONLY else "closed"


def test_table_holds_the_optimisers_the_paper_reads_as_memories():
    assert {"sgd", "adam", "adamw", "rmsprop", "adagrad", "muon", "m3", "preconditioned_momentum",
            "delta_momentum", "deep_momentum"} <= set(OPTIMIZERS)
    for name, cls in OPTIMIZERS.items():
        assert cls.name == name


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 4)])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimiser_steps_a_matrix_and_a_batch(backend, shape, name):
    xp = refmem.backends.get_backend(backend).namespace()
    rng = np.random.default_rng(0)
    opt = make(name, **HP.get(name, {}))
    W = xp.asarray(rng.standard_normal(shape))
    state = opt.init(W)
    for t in range(3):
        W_new, state, reports = opt.step(W, xp.asarray(rng.standard_normal(shape)), state, method=method_of(name))
        assert tuple(W_new.shape) == shape and W_new.dtype == W.dtype
        assert "weights" in reports and all(r.converged for r in reports.values())
        assert np.all(np.isfinite(to_numpy(W_new))) and np.any(to_numpy(W_new) != to_numpy(W))
        W = W_new


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_float32_stays_float32(name):
    rng = np.random.default_rng(1)
    opt = make(name, **HP.get(name, {}))
    W = rng.standard_normal((3, 4)).astype(np.float32)
    W1, _, _ = opt.step(W, rng.standard_normal((3, 4)).astype(np.float32), opt.init(W), method=method_of(name))
    assert W1.dtype == np.float32


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_bad_inputs_name_the_argument(xp, name):
    opt = make(name, **HP.get(name, {}))
    W = xp.ones((3, 2), dtype=xp.float64)
    state = opt.init(W)
    m = method_of(name)
    with pytest.raises(ValueError, match="g must have the shape of W"):
        opt.step(W, xp.ones((2, 3), dtype=xp.float64), state, method=m)
    with pytest.raises(ValueError, match="g contains non-finite"):
        opt.step(W, W * float("nan"), state, method=m)
    with pytest.raises(TypeError, match="g must be an array"):
        opt.step(W, 1.0, state, method=m)
    with pytest.raises(TypeError, match="dtype"):
        opt.step(W, xp.ones((3, 2), dtype=xp.float32), state, method=m)
    with pytest.raises(ValueError, match="W must have shape"):
        opt.init(xp.ones((3,), dtype=xp.float64))
    with pytest.raises(ValueError, match="method"):
        opt.step(W, W, state, method="newton")


def test_make_names_what_exists():
    with pytest.raises(ValueError, match="adam"):
        make("adamm")
    with pytest.raises(TypeError, match="momentum"):
        make("adam", momentum=0.9)  # Adam has betas, not momentum: the message lists its hyperparameters
    with pytest.raises(ValueError, match="lr"):
        make("sgd", lr=0.0)
    with pytest.raises(TypeError, match="lr"):
        make("sgd", lr="0.1")


def test_divergence_is_an_error_not_a_nan():
    opt = make("delta_momentum", lr=10.0, momentum=1.0)  # explicit step far beyond stability
    W = np.ones((2, 2)) * 10.0
    state = opt.init(W)
    # the overflow is refused where it happens (a DivergenceError, no NumPy warning), not returned as nan
    with pytest.raises(DivergenceError, match="delta_momentum"):
        for _ in range(200):
            W, state, _ = opt.step(W, W * 10.0, state)


def test_an_overflowing_moment_is_an_error_even_when_the_weights_stay_finite():
    # g^2 overflows to inf: Adam's direction m / sqrt(v) would be 0 and W finite, but the state is no longer a
    # number; the overflow is refused where it happens, naming the input that drove it (and no NumPy warning)
    opt = make("adam", lr=0.1)
    W = np.ones((2, 2))
    with pytest.raises(DivergenceError, match=r"adam: the step overflows .*max \|g\| = 1\.0e\+200"):
        opt.step(W, np.full((2, 2), 1e200), opt.init(W))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_foreign_state_is_a_type_error(name):
    opt = make(name, **HP.get(name, {}))
    other = make("sgd" if name != "sgd" else "adam")
    W = np.ones((3, 2))
    with pytest.raises(TypeError, match="state must be"):
        opt.step(W, W, other.init(W), method=method_of(name))
