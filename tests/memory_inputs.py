"""Inputs and comparisons shared by the sequence-memory tests (one test module per family of specs).

Tolerances: ``tol_same(d, T) = 64 d T eps`` for two algebraically equal float64
computations with inner products of length ``d`` accumulated over ``T`` steps
(each entry is a sum of ``O(d)`` products of O(1) numbers: the two roundings
differ by ``~2 d eps`` per step; 64 is the margin); closed vs iterative
``CLOSED_VS_ITERATIVE = 1e-10`` (the solvers stop at relative optimality 1e-12
and every problem in these tests has condition number < 50 unless its test
derives its own bound).
"""

import numpy as np

import refmem
from conftest import to_numpy
from refmem.memories import MEMORIES
from refmem.metrics import rel_error

EPS = float(np.finfo(np.float64).eps)
CLOSED_VS_ITERATIVE = 1e-10


def tol_same(d, T=1):
    """Two algebraically equal float64 computations, inner products of length d, T accumulated steps."""
    return 64 * d * T * EPS


def np_inputs(name, seed=0, batch=(2,), T=6, d_k=4, d_v=3, **kw):
    """A memory's random inputs as NumPy arrays (drawn by its make_inputs on the numpy backend)."""
    with refmem.backend("numpy") as xnp:
        inputs = MEMORIES[name].make_inputs(seed, batch, T, d_k, d_v, xnp, **kw)
    return {n: np.asarray(a) for n, a in inputs.items()}


def draw(name, seed, batch=(2,), T=6, d_k=4, d_v=3, xp=None):
    """A memory's random float64 inputs on ``xp`` (default: the current backend)."""
    xp = xp or refmem.backends.current_namespace()
    return MEMORIES[name].make_inputs(seed, batch, T, d_k, d_v, xp, "float64")


def on(xp, arrays):
    """Every array of ``arrays`` on namespace ``xp``."""
    return {n: xp.asarray(a) for n, a in arrays.items()}


def as_numpy(inputs):
    """Every array of ``inputs`` as a NumPy array (other entries, e.g. an int window, unchanged)."""
    return {n: (to_numpy(a) if hasattr(a, "shape") else a) for n, a in inputs.items()}


def rel(a, b):
    """:func:`refmem.metrics.rel_error` of ``a`` (any backend) against ``b`` on NumPy."""
    return rel_error(to_numpy(a), np.asarray(b), np)


def assert_check_passes(xp, spec, name_start):
    """Run the registered ``refmem verify`` check of ``spec`` whose name starts with ``name_start``; assert it passes.

    A test of an identity that a check already computes calls the check rather
    than typing its computation again; the test keeps what the check does not
    cover (the cases where the identity must fail, other shapes).
    """
    from refmem.checks import CHECKS

    found = [c for c in CHECKS if c.spec == spec and c.name.startswith(name_start)]
    assert len(found) == 1, f"{len(found)} checks of {spec!r} start with {name_start!r}"
    out = found[0].fn(xp)
    err, tol = (float(out[0]), float(out[1])) if isinstance(out, tuple) else (float(out), found[0].tolerance)
    assert err <= tol, f"{spec} / {found[0].name}: {err:.3g} > {tol:.3g}"
