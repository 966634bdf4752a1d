"""``refmem verify`` checks of the Miras memories: Yaad (Huber), Memora (KL on the simplex), Moneta (lp / lq).

Per memory: the scan step == its solved level (:mod:`refmem.checks.scan_steps`);
closed == iterative for the explicit and implicit steps; the identities each
reduces to (Yaad with a huge ``delta`` is the delta rule; Memora without its
pull to uniform is exponentiated gradient; Moneta with ``q = 2`` is
forget-gate gradient descent); and each on the deep memory, closed ==
iterative. The NumPy-only SciPy cross-checks are :mod:`refmem.checks.miras_scipy`.
"""

from __future__ import annotations

import math

from ..linalg import sign
from ..memories.deep_memory import deep_step
from ..memories.residual_mlp import ResidualLoss
from ..metrics import rel_error
from .registry import register_check
from .deep_memory import deep_problem
from .scan_steps import CLOSED_VS_ITERATIVE_TOL, SCAN_SHAPE, cached_step_errors, memory_inputs, rounding_tol

# --- Yaad

def _yaad_step_errors(xp):
    return cached_step_errors("yaad", xp)


@register_check("yaad", "scan step == solve(step_level, closed)")
def _yaad_scan_vs_level(xp):
    return _yaad_step_errors(xp)[0], rounding_tol(xp, xp.float64, SCAN_SHAPE["d_k"])


@register_check("yaad", "explicit step closed == iterative (CG)", CLOSED_VS_ITERATIVE_TOL)
def _yaad_explicit_closed_vs_iterative(xp):
    return _yaad_step_errors(xp)[1]


@register_check("yaad", "implicit scan closed == iterative, coordinate and norm Huber", CLOSED_VS_ITERATIVE_TOL)
def _yaad_implicit(xp):
    from ..memories.yaad import yaad_recurrent

    inp = memory_inputs("yaad", xp, seed=2, T=2)
    err = 0.0
    for mode in ("coordinate", "norm"):  # delta = 0.3 puts residuals on both sides of the kink
        o, M = yaad_recurrent(**inp, step="implicit", mode=mode, delta=0.3)
        o_it, M_it = yaad_recurrent(**inp, step="implicit", mode=mode, delta=0.3, method="iterative")
        err = max(err, rel_error(o_it, o, xp), rel_error(M_it, M, xp))
    return err


@register_check("yaad", "delta = 1e6, alpha = 1 == delta rule with beta = eta")
def _yaad_is_delta_rule(xp):
    from ..memories.delta_rule import delta_rule_recurrent
    from ..memories.yaad import yaad_recurrent

    inp = memory_inputs("yaad", xp, seed=3)
    alpha = xp.ones_like(inp["alpha"])
    o, M = yaad_recurrent(inp["q"], inp["k"], inp["v"], alpha, inp["eta"], delta=1e6)
    o_d, M_d = delta_rule_recurrent(inp["q"], inp["k"], inp["v"], inp["eta"])
    # residuals stay far below delta: clip is the identity and the two recurrences do the same arithmetic
    return max(rel_error(o, o_d, xp), rel_error(M, M_d, xp)), rounding_tol(xp, xp.float64, SCAN_SHAPE["d_k"])


@register_check("yaad", "deep memory: explicit scan closed == iterative (CG)", CLOSED_VS_ITERATIVE_TOL)
def _yaad_deep(xp):
    from ..memories.yaad import yaad_deep_recurrent

    inp = memory_inputs("yaad", xp, seed=4, T=3, d_v=SCAN_SHAPE["d_k"])
    o, (W1, W2) = yaad_deep_recurrent(**inp, delta=0.5)
    o_it, (A, B) = yaad_deep_recurrent(**inp, delta=0.5, method="iterative")
    return max(rel_error(o_it, o, xp), rel_error(A, W1, xp), rel_error(B, W2, xp))


# ------------------------------------------------------------


# --- Memora

@register_check("memora", "explicit scan closed (softmax rule) == mirror descent", CLOSED_VS_ITERATIVE_TOL)
def _memora_explicit(xp):
    from ..memories.memora import make_initial_state as simplex_state
    from ..memories.memora import memora_recurrent

    inp = memory_inputs("memora", xp, seed=1, T=2)
    M0 = simplex_state(2, SCAN_SHAPE["batch"], SCAN_SHAPE["d_k"], SCAN_SHAPE["d_v"], xp)
    o, M = memora_recurrent(**inp, a=2.0, initial_state=M0)
    o_it, M_it = memora_recurrent(**inp, a=2.0, initial_state=M0, method="iterative")
    return max(rel_error(o_it, o, xp), rel_error(M_it, M, xp))


@register_check("memora", "rows stay on the scaled simplex (c = 2) over a scan")
def _memora_simplex(xp):
    from ..memories.memora import memora_recurrent

    inp = memory_inputs("memora", xp, seed=2)
    _, M = memora_recurrent(**inp, c=2.0)
    if not bool(xp.all(M > 0)):
        return math.inf, 0.0
    # each row is c * softmax: its sum is c up to d_k roundings of the normalisation
    return float(xp.max(xp.abs(xp.sum(M, axis=-1) - 2.0))) / 2.0, rounding_tol(xp, xp.float64, SCAN_SHAPE["d_k"])


@register_check("memora", "a -> inf, eta = 1, c = 1: rows == softmax of the accumulated log-weights")
def _memora_unregularised(xp):
    # With a = inf (no pull to uniform) and eta' = eta, log M_t = log M_{t-1} - eta g_t + row const, so
    # M_T = softmax_row(log M_0 - sum_t eta_t g_t): an FTRL (exponentiated-gradient) identity checked
    # against the scan, gradients recomputed at the scan's own states.
    from ..memories.memora import memora_recurrent, uniform_state

    inp = memory_inputs("memora", xp, seed=3, T=5)
    q, k, v, eta = inp["q"], inp["k"], inp["v"], inp["eta"]
    M = uniform_state(SCAN_SHAPE["batch"], SCAN_SHAPE["d_v"], SCAN_SHAPE["d_k"], 1.0, xp, xp.float64)
    Z = xp.log(M)
    for t in range(5):
        r = (M @ k[..., t, :, None])[..., 0] - v[..., t, :]
        Z = Z - eta[..., t, None, None] * (r[..., :, None] * k[..., t, None, :])
        E = xp.exp(Z - xp.max(Z, axis=-1, keepdims=True))
        M = E / xp.sum(E, axis=-1, keepdims=True)
    _, M_scan = memora_recurrent(q, k, v, eta, a=1e300)
    # 1/a = 1e-300 is below every rounding: lam = 0 and eta' = eta exactly in float64
    return rel_error(M_scan, M, xp), rounding_tol(xp, xp.float64, SCAN_SHAPE["d_k"] * 5)


# ------------------------------------------------------------


# --- Moneta

def _moneta_step_errors(xp):
    return cached_step_errors("moneta", xp, T=2)


@register_check("moneta", "scan step == solve(step_level, closed)")
def _moneta_scan_vs_level(xp):
    return _moneta_step_errors(xp)[0], rounding_tol(xp, xp.float64, SCAN_SHAPE["d_k"])


@register_check("moneta", "explicit step closed == iterative (p = 3, q = 4, from a random state)",
                CLOSED_VS_ITERATIVE_TOL)
def _moneta_closed_vs_iterative(xp):
    return _moneta_step_errors(xp)[1]


@register_check("moneta", "q = 2: consistent rule == printed rule == forget-gate GD on ||r||_p^p")
def _moneta_q2(xp):
    # With q = 2 both mirror maps are the identity: A_t = alpha M_{t-1} - eta g and M_t = A_t, which is the
    # printed rule A / ||A||_2^0 and the forget-gate explicit step; written out here independently.
    from ..memories.moneta import moneta_recurrent

    inp = memory_inputs("moneta", xp, seed=4, T=5)
    q, k, v, alpha, eta = (inp[n] for n in ("q", "k", "v", "alpha", "eta"))
    _, M = moneta_recurrent(q, k, v, alpha, eta, p=3.0, lq=2.0)
    W = xp.zeros_like(M)
    for t in range(5):
        r = (W @ k[..., t, :, None])[..., 0] - v[..., t, :]
        g = (3.0 * sign(r, xp) * xp.abs(r) ** 2)[..., :, None] * k[..., t, None, :]
        W = alpha[..., t, None, None] * W - eta[..., t, None, None] * g
    return rel_error(M, W, xp), rounding_tol(xp, xp.float64, SCAN_SHAPE["d_k"] * 5)


# ------------------------------------------------------------


# --- on the deep memory

def _deep_explicit_closed_vs_iterative(xp, retention, loss, W0):
    W1, W2, k, v = deep_problem(xp, seed=9, d=3, h=3)
    W0 = (W1, W2) if W0 is None else W0
    (A, B), _ = deep_step(W0, k, v, retention=retention, loss=loss, step="explicit", method="closed")
    (A2, B2), _ = deep_step(W0, k, v, retention=retention, loss=loss, step="explicit", method="iterative")
    return max(rel_error(A2, A, xp), rel_error(B2, B, xp))


@register_check("moneta", "deep memory: explicit step closed (lq mirror step per matrix) == iterative",
                CLOSED_VS_ITERATIVE_TOL)
def _moneta_deep_explicit(xp):
    from ..retentions.lq_moneta import LqMoneta

    return _deep_explicit_closed_vs_iterative(xp, LqMoneta(q=4.0, alpha=0.9, eta=0.3), ResidualLoss("lp", p=3.0), None)


@register_check("memora", "deep memory: explicit step closed (row softmax per matrix) == mirror descent",
                CLOSED_VS_ITERATIVE_TOL)
def _memora_deep_explicit(xp):
    from ..memories.memora import make_initial_state as simplex_state
    from ..retentions.kl_simplex import KLSimplex

    W0 = (simplex_state(10, (2,), 3, 3, xp), simplex_state(11, (2,), 3, 3, xp))  # W1 [3, h=3], W2 [h=3, 3]
    return _deep_explicit_closed_vs_iterative(xp, KLSimplex(eta=0.5, a=2.0, c=1.0), ResidualLoss("l2"), W0)


# ------------------------------------------------------------
