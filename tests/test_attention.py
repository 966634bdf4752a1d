"""Softmax and sliding-window attention: hand-computed cases, the masked-softmax reference, CG, overflow, bad inputs."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refmem
from conftest import to_numpy
from memory_inputs import CLOSED_VS_ITERATIVE, draw
from memory_inputs import EPS
from refmem.memories import MEMORIES
from refmem.memories.softmax_attention import (attention_iterative, sliding_window_attention_recurrent,
                                               softmax_attention_recurrent)
from refmem.metrics import rel_error


def attention_reference(q, k, v, window=None, K0=None, V0=None):
    """Direct formula, float64 NumPy: o_t = sum_i e^{s_i} v_i / sum_i e^{s_i}, scores shifted by their max."""
    if K0 is not None:
        k, v = np.concatenate([K0, k], -2), np.concatenate([V0, v], -2)
    n0 = 0 if K0 is None else K0.shape[-2]
    T = q.shape[-2]
    out = np.zeros(q.shape[:-1] + (v.shape[-1],))
    for t in range(T):
        lo = 0 if window is None else max(0, n0 + t - window + 1)
        s = np.einsum("...d,...nd->...n", q[..., t, :], k[..., lo:n0 + t + 1, :])
        w = np.exp(s - s.max(-1, keepdims=True))
        out[..., t, :] = np.einsum("...n,...nd->...d", w, v[..., lo:n0 + t + 1, :]) / w.sum(-1)[..., None]
    return out


def test_attention_two_tokens_by_hand(xp):
    q = xp.asarray([[0.0, 0.0], [1.0, 0.0]])
    k = xp.asarray([[2.0, 0.0], [0.0, 3.0]])
    v = xp.asarray([[1.0, 0.0], [0.0, 1.0]])
    o, (K, V) = softmax_attention_recurrent(q, k, v)
    # t=0: only v_0. t=1: scores q.k = (2, 0): weights e^2/(e^2+1), 1/(e^2+1)
    e2 = math.exp(2.0)
    want = np.array([[1.0, 0.0], [e2 / (e2 + 1), 1 / (e2 + 1)]])
    assert rel_error(to_numpy(o), want, np) <= 4 * EPS
    assert K.shape == (2, 2) and V.shape == (2, 2)


@given(seed=st.integers(0, 2**16), T=st.integers(1, 9), window=st.one_of(st.none(), st.integers(1, 10)),
       scale=st.floats(min_value=0.1, max_value=50.0, allow_nan=False))
@settings(max_examples=20)
def test_attention_closed_equals_reference_and_cg(seed, T, window, scale):
    with refmem.backend("numpy") as xp:
        inp = draw("softmax_attention", seed, T=T, xp=xp)
        inp["q"] = inp["q"] * scale
        o, _ = sliding_window_attention_recurrent(**inp, window=window)
        ref = attention_reference(*(to_numpy(inp[n]) for n in "qkv"), window)
        # both are sums of <= T positive weights times values over a sum >= 1: ~ 4 T eps relative each
        assert rel_error(to_numpy(o), ref, np) <= 64 * 10 * EPS
        o_it, rep = attention_iterative(**inp, window=window)
        assert rep.converged
        assert rel_error(o_it, o, xp) <= CLOSED_VS_ITERATIVE  # Hessian = (sum w) I: kappa = 1


def test_attention_cg_on_strict_and_cache(xp):
    inp = draw("sliding_window_attention", 2, T=7, xp=xp)
    inp.pop("window")
    K0, V0 = MEMORIES["softmax_attention"].make_initial_state(3, (2,), 4, 3, xp)
    for window in (None, 1, 3, 20):
        o, (K, V) = sliding_window_attention_recurrent(**inp, window=window, initial_state=(K0, V0))
        o_it, _ = attention_iterative(**inp, window=window, initial_state=(K0, V0))
        assert rel_error(o_it, o, xp) <= CLOSED_VS_ITERATIVE
        ref = attention_reference(*(to_numpy(inp[n]) for n in "qkv"), window, to_numpy(K0), to_numpy(V0))
        assert rel_error(to_numpy(o), ref, np) <= 64 * 10 * EPS
        assert K.shape[-2] == (10 if window is None else min(window, 10))


def test_window_T_equals_full_and_window_1_is_v(xp):
    inp = draw("softmax_attention", 4, T=8, xp=xp)
    o_full, _ = softmax_attention_recurrent(**inp)
    o_T, _ = sliding_window_attention_recurrent(**inp, window=8)
    o_big, _ = sliding_window_attention_recurrent(**inp, window=100)
    assert rel_error(o_T, o_full, xp) == 0.0  # the window never drops a token: the same operations
    assert rel_error(o_big, o_full, xp) == 0.0
    o_1, _ = sliding_window_attention_recurrent(**inp, window=1)
    assert rel_error(o_1, inp["v"], xp) <= EPS  # softmax of one score is exactly 1 (w = e^0 = 1)


def test_attention_split_scan_equals_one_scan(xp):
    inp = draw("softmax_attention", 6, T=9, xp=xp)
    for window in (None, 2, 4):
        o, cache = sliding_window_attention_recurrent(**inp, window=window)
        first = {n: a[..., :5, :] for n, a in inp.items()}
        rest = {n: a[..., 5:, :] for n, a in inp.items()}
        o1, c1 = sliding_window_attention_recurrent(**first, window=window)
        o2, c2 = sliding_window_attention_recurrent(**rest, window=window, initial_state=c1)
        assert rel_error(xp.concat([o1, o2], axis=-2), o, xp) == 0.0  # same caches, same operations
        assert rel_error(c2[0], cache[0], xp) == 0.0


def test_attention_huge_scores_stay_finite(xp):
    inp = draw("softmax_attention", 8, T=5, xp=xp)
    inp["q"] = inp["q"] * 1e4  # scores ~1e3-1e4: exp overflows without the shift
    o, _ = softmax_attention_recurrent(**inp)
    assert bool(xp.all(xp.isfinite(o)))
    ref = attention_reference(*(to_numpy(inp[n]) for n in "qkv"))
    assert rel_error(to_numpy(o), ref, np) <= 64 * 5 * EPS * 1e4  # scores carry ~|s| eps absolute error each


def test_attention_numpy_equals_strict():
    outs = []
    for name in ("numpy", "array_api_strict"):
        with refmem.backend(name) as xp:
            inp = draw("sliding_window_attention", 1, batch=(2, 2), xp=xp)
            outs.append(to_numpy(sliding_window_attention_recurrent(**inp)[0]))
    assert rel_error(outs[0], outs[1], np) <= 64 * 6 * EPS


def test_attention_bad_inputs(xp):
    inp = draw("softmax_attention", 0, xp=xp)
    with pytest.raises(ValueError, match="window must be >= 1"):
        sliding_window_attention_recurrent(**inp, window=0)
    with pytest.raises(TypeError, match="window"):
        sliding_window_attention_recurrent(**inp, window=2.5)
    with pytest.raises(TypeError, match="window"):
        sliding_window_attention_recurrent(**inp, window=True)
    with pytest.raises(TypeError, match="key-value cache"):
        softmax_attention_recurrent(**inp, initial_state=xp.zeros((2, 3, 4), dtype=xp.float64))
    K0, V0 = MEMORIES["softmax_attention"].make_initial_state(1, (2,), 4, 3, xp)
    with pytest.raises(ValueError, match="V_0"):
        softmax_attention_recurrent(**inp, initial_state=(K0, V0[..., :2, :]))
    with pytest.raises(ValueError, match="K_0"):
        softmax_attention_recurrent(**inp, initial_state=(K0[..., :3], V0))
    with pytest.raises(ValueError, match="v must be"):
        softmax_attention_recurrent(inp["q"], inp["k"], inp["v"][..., :4, :])
    with pytest.raises(ValueError, match="non-finite"):
        softmax_attention_recurrent(inp["q"] * xp.asarray(float("inf")), inp["k"], inp["v"])
