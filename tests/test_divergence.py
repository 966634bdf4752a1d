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
    # the residual doubles per step from O(1): float64 (2^1024) overflows near step 1024 (the chunked
    # form from the start of the chunk that holds it: chunks of 64), and no single step's input stands out
    with pytest.raises(DivergenceError, match=r"non-finite values from step t = \d+ on: the recurrence "
                       r"diverged.*beta_t\| = 3.*no input stands out") as info:
        fn(**_diverging_delta_inputs(xp))
    assert 1024 - 64 <= info.value.step <= 1100


def test_divergence_names_the_step_and_the_input_that_drove_it(xp):
    """One huge key at step 7 overflows the state there: the error names step 7 and k."""
    inp = MEMORIES["delta_rule"].make_inputs(0, (2,), 12, 4, 3, xp)
    k = to_numpy(inp["k"]).copy()
    k[1, 7, :] = 1e200  # beta ||k||^2 ~ 1e400: inf in the state at step 7
    with pytest.raises(DivergenceError, match=r"from step t = 7 on.*driven by k at step 7") as info:
        MEMORIES["delta_rule"].recurrent(**dict(inp, k=xp.asarray(k)))
    assert info.value.step == 7


def test_an_overflowing_level_scan_is_a_divergence_not_bad_input(xp):
    """Moneta's steps are solved one level at a time: an overflow at step t is reported at t, not as a bad M_t."""
    inp = MEMORIES["moneta"].make_inputs(0, (1,), 6, 3, 3, xp)
    v = to_numpy(inp["v"]).copy()
    # |r|^(p-1) = 1e240 in the lp gradient at step 2 makes a huge (finite) state, which overflows at step 3
    v[0, 2, :] = 1e120
    with pytest.raises(DivergenceError, match=r"state contains non-finite values from step t = 3 on.*driven by v at step 2"):
        MEMORIES["moneta"].recurrent(**dict(inp, v=xp.asarray(v)))


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
