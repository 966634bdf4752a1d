"""``refmem verify`` checks for Mesa, softmax / sliding-window attention and the deep memory (MATH.md 5).

- ``mesa``: the closed form (running sums + linear solve) == conjugate
  gradient on the stated objective; per-channel regulariser likewise; scanning
  in two parts from the sufficient statistics == one scan.
- ``softmax_attention`` / ``sliding_window_attention``: the stable softmax
  read-out == conjugate gradient on the weighted least squares; window
  ``c = T`` == full attention; scores near the overflow limit stay finite.
- ``deep_memory``: the hand-written gradients in ``W1``, ``W2`` (l2, lp, Huber)
  == central finite differences within a derived bound; explicit step closed
  == CG; the implicit step satisfies its optimality condition.

Tolerances:

- closed vs iterative: 1e-10 relative. The solvers stop at relative
  optimality ``rtol = 1e-12``; the error in the solution is at most
  ``rtol * kappa`` relative. Mesa's problems here have
  ``kappa <= (sum ||k_i||^2 + lam_max)/lam_min < 40`` (checked and returned as
  the bound ``max(1e-10, 4 rtol kappa)``); attention's Hessians are multiples
  of the identity (``kappa = 1``); the deep explicit step's Hessian is ``I/eta``.
- two orders of the same float computation: ``64 n eps`` relative (``n`` the
  longest sum), as in :mod:`refmem.checks.sequence_memories_a`.
- finite differences: :func:`fd_bound` (truncation ``h^2/6 C_3`` plus rounding ``delta/h``).
"""

from __future__ import annotations

import math

from ..memories import MEMORIES
from ..memories.deep_memory import deep_step
from ..memories.residual_mlp import ResidualLoss, deep_loss, deep_loss_grad, make_initial_state, mlp_forward
from ..memories.mesa import make_initial_state as mesa_stats
from ..memories.mesa import mesa_iterative, mesa_objective, mesa_recurrent
from ..memories.softmax_attention import (attention_iterative, make_initial_state as kv_cache,
                                          sliding_window_attention_recurrent, softmax_attention_recurrent)
from ..linalg import sign
from ..metrics import rel_error
from ..problems import rng, to_backend
from ..retentions import ForgetGate
from ..solvers import default_rtol
from . import register_check

CLOSED_VS_ITERATIVE_TOL = 1e-10
SHAPE = dict(batch=(2,), T=8, d_k=4, d_v=3)


def _inputs(name, xp, seed=0, **shape):
    s = dict(SHAPE, **shape)
    return MEMORIES[name].make_inputs(seed, s["batch"], s["T"], s["d_k"], s["d_v"], xp, "float64")


def rounding_tol(xp, dtype, n: int) -> float:
    """Two evaluation orders of the same sums of ``n`` O(1) terms differ by at most ``~2 n eps``; 64 for margin."""
    return 64 * n * float(xp.finfo(dtype).eps)


# ------------------------------------------------------------------ Mesa


def _mesa_bound(inp, xp):
    _, kappa = mesa_objective(inp["q"], inp["k"], inp["v"], inp["lam"], initial_state=inp.get("initial_state"))
    return max(CLOSED_VS_ITERATIVE_TOL, 4 * default_rtol(inp["k"].dtype, xp, condition=kappa) * kappa)


@register_check("mesa", "closed (linear solve) == conjugate gradient, per-step lam")
def _mesa_solve_vs_cg(xp):
    inp = _inputs("mesa", xp)
    o, M = mesa_recurrent(**inp)
    o_it, M_it, _ = mesa_iterative(**inp)
    return max(rel_error(o_it, o, xp), rel_error(M_it, M, xp)), _mesa_bound(inp, xp)


@register_check("mesa", "closed == conjugate gradient, per-channel lam and initial statistics")
def _mesa_channel_vs_cg(xp):
    inp = _inputs("mesa", xp, seed=1)
    g = rng(5)
    inp["lam"] = to_backend(g.uniform(0.3, 1.5, size=tuple(inp["k"].shape)), xp)  # (.., T, d_k)
    inp["initial_state"] = mesa_stats(6, SHAPE["batch"], SHAPE["d_k"], SHAPE["d_v"], xp)
    o, M = mesa_recurrent(**inp)
    o_it, M_it, _ = mesa_iterative(**inp)
    return max(rel_error(o_it, o, xp), rel_error(M_it, M, xp)), _mesa_bound(inp, xp)


@register_check("mesa", "scan of x[:s] then x[s:] from its statistics == scan of x")
def _mesa_split(xp):
    inp = _inputs("mesa", xp, seed=2)
    s = 3
    first = {n: a[..., :s, :] if a.ndim == 3 else a[..., :s] for n, a in inp.items()}
    rest = {n: a[..., s:, :] if a.ndim == 3 else a[..., s:] for n, a in inp.items()}
    o, M = mesa_recurrent(**inp)
    o1, _, stats = mesa_recurrent(**first, return_stats=True)
    o2, M2 = mesa_recurrent(**rest, initial_state=stats)
    err = max(rel_error(xp.concat([o1, o2], axis=-2), o, xp), rel_error(M2, M, xp))
    return err, 64 * SHAPE["T"] * SHAPE["d_k"] * float(xp.finfo(xp.float64).eps)


# ------------------------------------------------------------------ attention


@register_check("softmax_attention", "closed (stable softmax) == CG on the weighted least squares")
def _softmax_vs_cg(xp):
    inp = _inputs("softmax_attention", xp)
    o, _ = softmax_attention_recurrent(**inp)
    o_it, _ = attention_iterative(**inp)
    return rel_error(o_it, o, xp), CLOSED_VS_ITERATIVE_TOL


@register_check("softmax_attention", "scores of size 700 (exp overflows unshifted): finite and == CG")
def _softmax_large_scores(xp):
    inp = _inputs("softmax_attention", xp, seed=3)
    inp["q"] = inp["q"] * 700.0 / float(xp.max(xp.abs(inp["q"] @ xp.matrix_transpose(inp["k"]))))
    o, _ = softmax_attention_recurrent(**inp)
    if not bool(xp.all(xp.isfinite(o))):
        return math.inf, CLOSED_VS_ITERATIVE_TOL
    o_it, _ = attention_iterative(**inp)
    return rel_error(o_it, o, xp), CLOSED_VS_ITERATIVE_TOL


@register_check("sliding_window_attention", "window c = T == full softmax attention")
def _window_T_is_full(xp):
    inp = _inputs("sliding_window_attention", xp)
    inp.pop("window")
    o_full, _ = softmax_attention_recurrent(**inp)
    o_win, _ = sliding_window_attention_recurrent(**inp, window=SHAPE["T"])
    return rel_error(o_win, o_full, xp), rounding_tol(xp, xp.float64, SHAPE["T"])


@register_check("sliding_window_attention", "closed == CG, window 3 over an earlier cache")
def _window_vs_cg(xp):
    inp = _inputs("sliding_window_attention", xp, seed=4)
    inp["window"] = 3
    inp["initial_state"] = kv_cache(7, SHAPE["batch"], SHAPE["d_k"], SHAPE["d_v"], xp)
    o, _ = sliding_window_attention_recurrent(**inp)
    o_it, _ = attention_iterative(**inp)
    return rel_error(o_it, o, xp), CLOSED_VS_ITERATIVE_TOL


# ------------------------------------------------------------------ deep memory

DEEP_LOSSES = {"l2": ResidualLoss("l2"), "lp(p=3)": ResidualLoss("lp", p=3.0), "huber": ResidualLoss("huber", delta=0.5)}
# third-derivative bounds of the activation tanh: |tanh'| <= 1, |tanh''| <= 0.77, |tanh'''| <= 2
_S1, _S2, _S3 = 1.0, 4 / (3 * math.sqrt(3)), 2.0


def deep_problem(xp, seed=0, d=4, h=3, batch=(2,)):
    W1, W2 = make_initial_state(seed, batch, d, xp, h=h)
    g = rng(seed + 100)
    k = to_backend(g.standard_normal(tuple(batch) + (d,)) / math.sqrt(d), xp)
    v = to_backend(g.standard_normal(tuple(batch) + (d,)), xp)
    return W1, W2, k, v


def central_differences(W1, W2, k, v, loss, xp, which, step):
    """Central differences of ``l`` in every entry of ``W1`` (``which=0``) or ``W2`` (``which=1``), all at once.

    The ``n`` perturbed copies ride on a new batch axis just before the matrix axes.
    """
    W = W1 if which == 0 else W2
    a, b = W.shape[-2], W.shape[-1]
    E = xp.reshape(xp.eye(a * b, dtype=W.dtype), (a * b, a, b))  # (n, a, b)
    Wb = W[..., None, :, :]  # (.., 1, a, b)
    kb, vb = k[..., None, :], v[..., None, :]  # (.., 1, d)
    o1, o2 = (W1[..., None, :, :], W2[..., None, :, :])

    def f(Wp):
        return deep_loss(Wp, o2, kb, vb, loss, xp) if which == 0 else deep_loss(o1, Wp, kb, vb, loss, xp)

    fd = (f(Wb + step * E) - f(Wb - step * E)) / (2 * step)  # (.., n)
    return xp.reshape(fd, tuple(W.shape))


def fd_bound(W1, W2, k, v, loss, xp, step):
    r"""Bound on ``|central difference - derivative|`` over every coordinate of ``W1`` and ``W2``.

    Along a coordinate the residual moves on a curve ``phi(s)``: for ``W1_ij``
    ``phi = s a_j e_i`` (a line: ``|phi'| <= |a_j|``, ``phi'' = 0``); for ``W2_ij``
    ``phi = w_i (sigma(z_i + s x_j) - sigma(z_i))`` with ``w_i`` column ``i`` of
    ``W1``, so ``|phi^(m)| <= ||w_i|| |x_j|^m sup|sigma^(m)|``. The chain rule gives
    :math:`|f'''| \le B_3 |\phi'|^3 + 3 B_2 |\phi'||\phi''| + \|u\|_{max}|\phi'''|`,
    with ``B_2``, ``B_3`` bounds on the loss's second and third derivatives
    within the step. Rounding: one evaluation of ``l`` errs by at most
    ``delta = 4 (d + h + 2) eps (|l| + sum of |terms|)``, bounded here by
    ``4 (d + h + 2) eps (l + 1) * 8``. Total ``h^2/6 max|f'''| + delta/h``.
    """
    eps = float(xp.finfo(W1.dtype).eps)
    y_minus_v = deep_loss_residual(W1, W2, k, v, xp)
    r_max = float(xp.max(xp.abs(y_minus_v))) + 1.0
    B2 = loss.curvature(r_max)
    B3 = loss.third(r_max)
    U = float(xp.max(xp.abs(loss.grad(y_minus_v, xp)))) + B2 * 1.0
    x_max = float(xp.max(xp.abs(k)))
    a_max = 1.0  # |tanh| <= 1
    w_max = float(xp.max(xp.sqrt(xp.sum(W1 * W1, axis=-2))))  # largest column norm of W1
    d, h = W1.shape[-2], W1.shape[-1]
    third_W1 = B3 * a_max ** 3
    p1, p2, p3 = w_max * x_max * _S1, w_max * x_max ** 2 * _S2, w_max * x_max ** 3 * _S3
    third_W2 = B3 * p1 ** 3 + 3 * B2 * p1 * p2 + math.sqrt(d) * U * p3
    l_max = float(xp.max(deep_loss(W1, W2, k, v, loss, xp)))
    delta = 4 * (d + h + 2) * eps * (l_max + 1.0) * 8
    return step * step / 6 * max(third_W1, third_W2) + delta / step


def deep_loss_residual(W1, W2, k, v, xp):
    y, _ = mlp_forward(W1, W2, k, xp)
    return y - v


def _huber_away_from_kinks(W1, W2, k, v, loss, xp, step):
    """Huber's second derivative jumps at ``|r_i| = delta``; the bound needs no kink within the difference step."""
    if loss.name != "huber":
        return True
    r = deep_loss_residual(W1, W2, k, v, xp)
    reach = step * (1.0 + float(xp.max(xp.abs(W1))) * float(xp.max(xp.abs(k)))) * W1.shape[-1]
    return float(xp.min(xp.abs(xp.abs(r) - loss.delta))) > reach


def _register_fd(lname, loss):
    @register_check("deep_memory", f"hand-written grad W1, W2 == central differences ({lname})")
    def check(xp, loss=loss):
        W1, W2, k, v = deep_problem(xp, seed=3)
        step = float(xp.finfo(W1.dtype).eps) ** (1 / 3)
        if not _huber_away_from_kinks(W1, W2, k, v, loss, xp, step):
            return math.inf, 0.0
        _, g1, g2 = deep_loss_grad(W1, W2, k, v, loss, xp)
        e1 = float(xp.max(xp.abs(central_differences(W1, W2, k, v, loss, xp, 0, step) - g1)))
        e2 = float(xp.max(xp.abs(central_differences(W1, W2, k, v, loss, xp, 1, step) - g2)))
        return max(e1, e2), fd_bound(W1, W2, k, v, loss, xp, step)


for _lname, _loss in DEEP_LOSSES.items():
    _register_fd(_lname, _loss)


@register_check("deep_memory", "explicit step (forget gate): closed (GD step) == CG on the linearised level")
def _deep_explicit(xp):
    W1, W2, k, v = deep_problem(xp, seed=4)
    ret = ForgetGate(eta=0.3, alpha=0.9)
    (A, B), _ = deep_step((W1, W2), k, v, retention=ret, loss=DEEP_LOSSES["huber"], step="explicit", method="closed")
    (A2, B2), _ = deep_step((W1, W2), k, v, retention=ret, loss=DEEP_LOSSES["huber"], step="explicit",
                            method="iterative")
    return max(rel_error(A2, A, xp), rel_error(B2, B, xp)), CLOSED_VS_ITERATIVE_TOL


@register_check("deep_memory", "implicit step (GD, Huber): W == alpha W_t - eta grad l(W), fixed point")
def _deep_implicit_fixed_point(xp):
    # The minimiser of l(W) + 1/(2 eta)||W - alpha W_t||^2 satisfies W = alpha W_t - eta grad l(W).
    # The solver stops at ||grad F|| <= rtol max(||W||/eta, r0); the fixed-point residual relative
    # to ||W|| is then <= rtol * max(1, eta r0/||W||) -- returned as the bound.
    W1, W2, k, v = deep_problem(xp, seed=5)
    ret = ForgetGate(eta=0.3, alpha=0.9)
    loss = DEEP_LOSSES["huber"]
    (A, B), rep = deep_step((W1, W2), k, v, retention=ret, loss=loss, step="implicit", method="iterative")
    _, g1, g2 = deep_loss_grad(A, B, k, v, loss, xp)
    _, h1, h2 = deep_loss_grad(W1, W2, k, v, loss, xp)
    r0 = math.sqrt(float(xp.max(xp.sum(h1 * h1, axis=(-2, -1)) + xp.sum(h2 * h2, axis=(-2, -1)))))
    err = max(rel_error(0.9 * W1 - 0.3 * g1, A, xp), rel_error(0.9 * W2 - 0.3 * g2, B, xp))
    scale = min(float(xp.max(xp.abs(A))), float(xp.max(xp.abs(B))))
    bound = 4 * rep.tolerance * max(1.0, 0.3 * r0 / scale) * math.sqrt(A.shape[-1] * A.shape[-2] * 2)
    return err, max(bound, rounding_tol(xp, xp.float64, A.shape[-1]))


# ------------------------------------------------------------------ Miras: Yaad


_STEP_ERRORS: dict = {}


def _step_errors(name, xp, **shape):
    """``sequence_memories_a.step_errors`` once per (memory, backend): two checks read its two numbers."""
    from .sequence_memories_a import step_errors

    key = (name, getattr(xp, "__name__", repr(xp)))
    if key not in _STEP_ERRORS:
        _STEP_ERRORS[key] = step_errors(name, xp, shape=shape or None)
    return _STEP_ERRORS[key]


def _yaad_step_errors(xp):
    return _step_errors("yaad", xp)


@register_check("yaad", "scan step == solve(step_level, closed)")
def _yaad_scan_vs_level(xp):
    return _yaad_step_errors(xp)[0], rounding_tol(xp, xp.float64, SHAPE["d_k"])


@register_check("yaad", "explicit step closed == iterative (CG)", CLOSED_VS_ITERATIVE_TOL)
def _yaad_explicit_closed_vs_iterative(xp):
    return _yaad_step_errors(xp)[1]


@register_check("yaad", "implicit scan closed == iterative, coordinate and norm Huber", CLOSED_VS_ITERATIVE_TOL)
def _yaad_implicit(xp):
    from ..memories.yaad import yaad_recurrent

    inp = _inputs("yaad", xp, seed=2, T=2)
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

    inp = _inputs("yaad", xp, seed=3)
    alpha = xp.ones_like(inp["alpha"])
    o, M = yaad_recurrent(inp["q"], inp["k"], inp["v"], alpha, inp["eta"], delta=1e6)
    o_d, M_d = delta_rule_recurrent(inp["q"], inp["k"], inp["v"], inp["eta"])
    # residuals stay far below delta: clip is the identity and the two recurrences do the same arithmetic
    return max(rel_error(o, o_d, xp), rel_error(M, M_d, xp)), rounding_tol(xp, xp.float64, SHAPE["d_k"])


@register_check("yaad", "deep memory: explicit scan closed == iterative (CG)", CLOSED_VS_ITERATIVE_TOL)
def _yaad_deep(xp):
    from ..memories.yaad import yaad_deep_recurrent

    inp = _inputs("yaad", xp, seed=4, T=3, d_v=SHAPE["d_k"])
    o, (W1, W2) = yaad_deep_recurrent(**inp, delta=0.5)
    o_it, (A, B) = yaad_deep_recurrent(**inp, delta=0.5, method="iterative")
    return max(rel_error(o_it, o, xp), rel_error(A, W1, xp), rel_error(B, W2, xp))


# ------------------------------------------------------------------ Miras: Memora


@register_check("memora", "explicit scan closed (softmax rule) == mirror descent", CLOSED_VS_ITERATIVE_TOL)
def _memora_explicit(xp):
    from ..memories.memora import make_initial_state as simplex_state
    from ..memories.memora import memora_recurrent

    inp = _inputs("memora", xp, seed=1, T=2)
    M0 = simplex_state(2, SHAPE["batch"], SHAPE["d_k"], SHAPE["d_v"], xp)
    o, M = memora_recurrent(**inp, a=2.0, initial_state=M0)
    o_it, M_it = memora_recurrent(**inp, a=2.0, initial_state=M0, method="iterative")
    return max(rel_error(o_it, o, xp), rel_error(M_it, M, xp))


@register_check("memora", "rows stay on the scaled simplex (c = 2) over a scan")
def _memora_simplex(xp):
    from ..memories.memora import memora_recurrent

    inp = _inputs("memora", xp, seed=2)
    _, M = memora_recurrent(**inp, c=2.0)
    if not bool(xp.all(M > 0)):
        return math.inf, 0.0
    # each row is c * softmax: its sum is c up to d_k roundings of the normalisation
    return float(xp.max(xp.abs(xp.sum(M, axis=-1) - 2.0))) / 2.0, rounding_tol(xp, xp.float64, SHAPE["d_k"])


@register_check("memora", "a -> inf, eta = 1, c = 1: rows == softmax of the accumulated log-weights")
def _memora_unregularised(xp):
    # With a = inf (no pull to uniform) and eta' = eta, log M_t = log M_{t-1} - eta g_t + row const, so
    # M_T = softmax_row(log M_0 - sum_t eta_t g_t): an FTRL (exponentiated-gradient) identity checked
    # against the scan, gradients recomputed at the scan's own states.
    from ..memories.memora import memora_recurrent, uniform_state

    inp = _inputs("memora", xp, seed=3, T=5)
    q, k, v, eta = inp["q"], inp["k"], inp["v"], inp["eta"]
    M = uniform_state(SHAPE["batch"], SHAPE["d_v"], SHAPE["d_k"], 1.0, xp, xp.float64)
    Z = xp.log(M)
    for t in range(5):
        r = (M @ k[..., t, :, None])[..., 0] - v[..., t, :]
        Z = Z - eta[..., t, None, None] * (r[..., :, None] * k[..., t, None, :])
        E = xp.exp(Z - xp.max(Z, axis=-1, keepdims=True))
        M = E / xp.sum(E, axis=-1, keepdims=True)
    _, M_scan = memora_recurrent(q, k, v, eta, a=1e300)
    # 1/a = 1e-300 is below every rounding: lam = 0 and eta' = eta exactly in float64
    return rel_error(M_scan, M, xp), rounding_tol(xp, xp.float64, SHAPE["d_k"] * 5)


# ------------------------------------------------------------------ Miras: Moneta


def _moneta_step_errors(xp):
    return _step_errors("moneta", xp, T=2)


@register_check("moneta", "scan step == solve(step_level, closed)")
def _moneta_scan_vs_level(xp):
    return _moneta_step_errors(xp)[0], rounding_tol(xp, xp.float64, SHAPE["d_k"])


@register_check("moneta", "explicit step closed == iterative (p = 3, q = 4, from a random state)",
                CLOSED_VS_ITERATIVE_TOL)
def _moneta_closed_vs_iterative(xp):
    return _moneta_step_errors(xp)[1]


@register_check("moneta", "q = 2: consistent rule == printed rule == forget-gate GD on ||r||_p^p")
def _moneta_q2(xp):
    # With q = 2 both mirror maps are the identity: A_t = alpha M_{t-1} - eta g and M_t = A_t, which is the
    # printed rule A / ||A||_2^0 and the forget-gate explicit step; written out here independently.
    from ..memories.moneta import moneta_recurrent

    inp = _inputs("moneta", xp, seed=4, T=5)
    q, k, v, alpha, eta = (inp[n] for n in ("q", "k", "v", "alpha", "eta"))
    _, M = moneta_recurrent(q, k, v, alpha, eta, p=3.0, lq=2.0)
    W = xp.zeros_like(M)
    for t in range(5):
        r = (W @ k[..., t, :, None])[..., 0] - v[..., t, :]
        g = (3.0 * sign(r, xp) * xp.abs(r) ** 2)[..., :, None] * k[..., t, None, :]
        W = alpha[..., t, None, None] * W - eta[..., t, None, None] * g
    return rel_error(M, W, xp), rounding_tol(xp, xp.float64, SHAPE["d_k"] * 5)


# ------------------------------------------------------------------ Miras on the deep memory


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


# ------------------------------------------------------------------ Titans on the deep memory


@register_check("titans", "deep memory: scan with both levels closed == both iterative (CG)", CLOSED_VS_ITERATIVE_TOL)
def _titans_deep_closed_vs_iterative(xp):
    from ..memories.titans_deep import titans_deep_recurrent

    inp = _inputs("titans", xp, seed=1, T=3, d_k=3, d_v=3)
    o, W, S = titans_deep_recurrent(**inp, return_momentum=True)
    o_it, W_it, S_it = titans_deep_recurrent(**inp, return_momentum=True, method="iterative")
    return max(rel_error(o_it, o, xp), *(rel_error(a, b, xp) for a, b in zip(W_it + S_it, W + S)))


@register_check("titans", "deep memory: eta = 0, alpha = 0 == the deep memory's GD scan with step theta")
def _titans_deep_is_gd(xp):
    from ..memories.deep_memory import deep_memory_recurrent
    from ..memories.titans_deep import titans_deep_recurrent

    inp = _inputs("titans", xp, seed=2, T=4, d_k=3, d_v=3)
    zero = xp.zeros_like(inp["alpha"])
    o, W = titans_deep_recurrent(inp["q"], inp["k"], inp["v"], zero, zero, inp["theta"], loss="huber")
    o_gd, W_gd = deep_memory_recurrent(inp["q"], inp["k"], inp["v"], inp["theta"], loss="huber")
    # S = 0 * S - theta g and W = 1 * W + S: the same products as W - theta g, up to the added zeros
    return max(rel_error(o, o_gd, xp), rel_error(W[0], W_gd[0], xp), rel_error(W[1], W_gd[1], xp)), \
        rounding_tol(xp, xp.float64, 3)
