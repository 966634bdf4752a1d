"""Nothing returns nan silently: a diverging scan raises DivergenceError (unless checks are switched off)."""

import numpy as np
import pytest

import refmem
from refmem.memories import MEMORIES
from refmem.validation import DivergenceError

from conftest import to_numpy


def _diverging_delta_inputs(xp, T=2000):
    # beta ||k||^2 = 3 > 2: the explicit delta step multiplies the residual by |1 - 3| = 2 per step,
    # so after ~1100 steps the state overflows float64 (2^1024)
    inp = MEMORIES["delta_rule"].make_inputs(0, (1,), T, 4, 3, xp)
    k = xp.ones_like(inp["k"]) / 2.0  # ||k||^2 = 1
    return dict(inp, k=k, beta=xp.full(inp["beta"].shape, 3.0, dtype=k.dtype))


@pytest.mark.parametrize("form", ["recurrent", "chunked"])
def test_diverging_delta_rule_raises(xp, form):
    fn = getattr(MEMORIES["delta_rule"], form)
    with np.errstate(all="ignore"), pytest.raises(DivergenceError, match="non-finite values: the recurrence diverged"):
        fn(**_diverging_delta_inputs(xp))


def test_check_finite_off_returns_what_was_computed(xp):
    """With checks off (a GPU user avoiding device reads) the caller owns the check, as documented."""
    with refmem.options(check_finite=False):
        with np.errstate(all="ignore"):
            o, M = MEMORIES["delta_rule"].recurrent(**_diverging_delta_inputs(xp))
    assert not np.all(np.isfinite(to_numpy(M)))


def test_lq_mirror_map_is_stable_for_tiny_and_huge_states(xp):
    from refmem.retentions.lq_moneta import lq_link, lq_mirror, lq_norm

    g = np.random.default_rng(0)
    M = g.standard_normal((2, 3, 4))
    for scale in (1e-150, 1.0, 1e150):
        X = xp.asarray(M * scale)
        for q in (1.5, 4.0):
            Y = lq_link(lq_mirror(X, q, xp), q, xp)  # the two maps are inverse to each other
            # each map is a few powers and products: relative rounding ~ 10 eps per entry, q-scaled
            assert np.max(np.abs(to_numpy(Y) - M * scale)) <= 1e-13 * scale * np.max(np.abs(M))
            n = to_numpy(lq_norm(X, q, xp))
            assert np.allclose(n, scale * np.sum(np.abs(M) ** q, axis=(1, 2)) ** (1 / q), rtol=1e-14)


def test_empty_sequence_is_a_clear_error(xp):
    """T = 0 has no output to stack: every registered form says so instead of failing inside the backend."""
    for name, spec in MEMORIES.items():
        if spec.make_inputs is None:
            continue
        inp = spec.make_inputs(0, (2,), 1, 3, 3, xp)
        empty = {n: (a[..., :0, :] if n in ("q", "k", "v") else a) for n, a in inp.items()}
        for form in ("recurrent", "chunked", "minibatch"):
            fn = getattr(spec, form)
            if fn is None:
                continue
            with pytest.raises(ValueError, match=r"T >= 1|at least one|T = 0|must have shape"):
                fn(**empty)
