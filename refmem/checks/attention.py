"""``refmem verify`` checks of softmax and sliding-window attention, read as a non-parametric memory.

The stable softmax read-out == conjugate gradient on the weighted least
squares (its Hessian is a multiple of the identity: ``kappa = 1``); window
``c = T`` == full attention; scores near the overflow limit stay finite.
"""

from __future__ import annotations

import math

from ..memories.softmax_attention import (attention_iterative, make_initial_state as kv_cache,
                                          sliding_window_attention_recurrent, softmax_attention_recurrent)
from ..metrics import rel_error
from .registry import register_check
from .scan_steps import CLOSED_VS_ITERATIVE_TOL, SCAN_SHAPE, memory_inputs, rounding_tol

@register_check("softmax_attention", "closed (stable softmax) == CG on the weighted least squares")
def _softmax_vs_cg(xp):
    inp = memory_inputs("softmax_attention", xp)
    o, _ = softmax_attention_recurrent(**inp)
    o_it, _ = attention_iterative(**inp)
    return rel_error(o_it, o, xp), CLOSED_VS_ITERATIVE_TOL


@register_check("softmax_attention", "scores of size 700 (exp overflows unshifted): finite and == CG")
def _softmax_large_scores(xp):
    inp = memory_inputs("softmax_attention", xp, seed=3)
    inp["q"] = inp["q"] * 700.0 / float(xp.max(xp.abs(inp["q"] @ xp.matrix_transpose(inp["k"]))))
    o, _ = softmax_attention_recurrent(**inp)
    if not bool(xp.all(xp.isfinite(o))):
        return math.inf, CLOSED_VS_ITERATIVE_TOL
    o_it, _ = attention_iterative(**inp)
    return rel_error(o_it, o, xp), CLOSED_VS_ITERATIVE_TOL


@register_check("sliding_window_attention", "window c = T == full softmax attention")
def _window_T_is_full(xp):
    inp = memory_inputs("sliding_window_attention", xp)
    inp.pop("window")
    o_full, _ = softmax_attention_recurrent(**inp)
    o_win, _ = sliding_window_attention_recurrent(**inp, window=SCAN_SHAPE["T"])
    return rel_error(o_win, o_full, xp), rounding_tol(xp, xp.float64, SCAN_SHAPE["T"])


@register_check("sliding_window_attention", "closed == CG, window 3 over an earlier cache")
def _window_vs_cg(xp):
    inp = memory_inputs("sliding_window_attention", xp, seed=4)
    inp["window"] = 3
    inp["initial_state"] = kv_cache(7, SCAN_SHAPE["batch"], SCAN_SHAPE["d_k"], SCAN_SHAPE["d_v"], xp)
    o, _ = sliding_window_attention_recurrent(**inp)
    o_it, _ = attention_iterative(**inp)
    return rel_error(o_it, o, xp), CLOSED_VS_ITERATIVE_TOL


# ------------------------------------------------------------
