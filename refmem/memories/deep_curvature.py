r"""Curvature bounds of the deep memory's loss in its weights (Titans, Miras; MATH.md 5g): the step sizes of its iterative solvers.

The implicit level step of :mod:`refmem.memories.deep_memory` minimises the
non-convex :math:`l(W; k, v) + \mathrm{Ret}(W, W_t)` by gradient descent with
step ``1/L``; ``L`` is the retention's Lipschitz constant plus twice the
curvature of ``l`` measured at ``W_t`` (:func:`measured_curvature`), capped by
the bound of :func:`curvature_bound`.
"""

from __future__ import annotations

import math

from ..linalg import matvec
from .residual_mlp import activation_of, deep_loss_grad, mlp_forward, pack_weights, unpack_weights


def curvature_bound(W1, W2, k, v, loss, activation, xp):
    r"""An estimate of the curvature of ``l`` in ``W`` at ``W_t`` (the Lipschitz constant gradient descent uses).

    Notes
    -----
    With ``J`` the Jacobian of ``M(k)`` in ``W`` and ``u = d ell/dr``,
    :math:`\nabla^2 l = J^T \nabla^2\ell\, J + \langle u, \nabla^2 M(k)\rangle`, and

    .. math::

        \|J\|^2 \le \|a\|^2 + \|W_1\|_F^2 \|k\|^2 \sup|\sigma'|^2, \qquad
        |\langle u, \nabla^2 M(k)\rangle| \le \|u\| (2 \sup|\sigma'| \|k\| + \|W_1\|_F \sup|\sigma''| \|k\|^2),

    evaluated at ``W_t``. Gradient descent with step ``1/L`` converges on a
    strongly convex smooth problem whenever ``1/L < 2/L_true``: the factor 2
    is the margin for the change of curvature between ``W_t`` and the
    minimiser (which is within about ``eta ||grad l(W_t)||`` for the step
    sizes a memory uses). A step too long for the true curvature makes
    gradient descent fail loudly (``ConvergenceError``), never silently.
    """
    sigma, _, s1, s2 = activation_of(activation)
    r = mlp_forward(W1, W2, k, xp, activation)[0] - v  # (.., d)
    a = sigma(matvec(W2, k), xp)  # (.., h)
    x2 = float(xp.max(xp.sum(k * k, axis=-1)))
    w1 = float(xp.max(xp.sum(W1 * W1, axis=(-2, -1))))
    a2 = float(xp.max(xp.sum(a * a, axis=-1)))
    r_max = float(xp.max(xp.abs(r)))
    u = float(xp.max(xp.sqrt(xp.sum(loss.grad(r, xp) ** 2, axis=-1))))
    c2 = loss.curvature(r_max)
    gn = c2 * (a2 + w1 * x2 * s1 * s1)
    res = u * (2 * s1 * math.sqrt(x2) + math.sqrt(w1) * s2 * x2)
    return gn + res


def measured_curvature(W1, W2, k, v, loss, activation, xp, iters=12):
    r"""Largest ``|eigenvalue|`` of the Hessian of ``l`` at ``W`` per batch element ``[...]``, by power iteration.

    Hessian-vector products are central differences of the hand-written
    gradient, :math:`H u \approx (\nabla l(W + \epsilon u) - \nabla l(W - \epsilon u)) / (2\epsilon)`,
    ``epsilon = eps^(1/3)``, from the start vector ``grad l + 1``. The
    estimate can only be low (by the part of the start vector on the top
    eigenvector); :func:`~refmem.memories.deep_memory.deep_step` doubles it and caps it by
    :func:`curvature_bound`.
    """
    h, d = W1.shape[-1], W1.shape[-2]
    X = pack_weights(W1, W2, xp)

    def grad(Y):
        A, B = unpack_weights(Y, h, d, xp)
        _, g1, g2 = deep_loss_grad(A, B, k, v, loss, xp, activation)
        return pack_weights(g1, g2, xp)

    e = float(xp.finfo(X.dtype).eps) ** (1 / 3)
    U = grad(X) + 1.0
    lam = xp.zeros(tuple(U.shape[:-2]), dtype=X.dtype)
    for _ in range(iters):
        n = xp.sqrt(xp.sum(U * U, axis=(-2, -1)))  # (..,)
        U = U / n[..., None, None]
        HU = (grad(X + e * U) - grad(X - e * U)) / (2 * e)  # (.., d, 2h)
        lam = xp.sqrt(xp.sum(HU * HU, axis=(-2, -1)))
        U = HU + 1e-3 * U  # keep a non-zero iterate when H U = 0
    return lam
