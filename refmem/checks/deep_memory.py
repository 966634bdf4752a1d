"""``refmem verify`` checks of the deep (residual MLP) memory.

The hand-written gradients in ``W1``, ``W2`` (l2, lp, Huber) == central finite
differences within a derived bound (:func:`fd_bound`: truncation
``h^2/6 C_3`` plus rounding ``delta/h``); the explicit step closed == CG (its
Hessian is ``I/eta``); the implicit step satisfies its optimality condition.
The NumPy-only SciPy cross-check of the implicit step is
:mod:`refmem.checks.deep_memory_scipy`.
"""

from __future__ import annotations

import math

from ..memories.deep_memory import deep_step
from ..memories.residual_mlp import ResidualLoss, deep_loss, deep_loss_grad, make_initial_state, mlp_forward
from ..metrics import rel_error
from ..problems import rng, to_backend
from ..retentions import ForgetGate
from .registry import register_check
from .scan_steps import CLOSED_VS_ITERATIVE_TOL, rounding_tol

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


# ------------------------------------------------------------
