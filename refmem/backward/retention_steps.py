r"""Backward passes of the explicit steps of the Miras retentions, on one matrix.

An explicit step maps the previous state ``M`` (any matrix ``[..., m, n]``: a
linear memory, or one weight matrix of the deep memory) and the gradient ``g``
of the attentional bias at ``M`` to the next state; the gates are per batch
entry ``[...]``. Each ``*_step_vjp`` takes the cotangent ``S`` of the next state
and returns ``(dM, dg, {gate: d gate})``, the adjoint of its step:

Forget gate (:class:`~refmem.retentions.ForgetGate`), :math:`M' = \alpha M - \eta g`:

.. math::

    dM = \alpha S, \quad dg = -\eta S, \quad d\alpha = \langle S, M\rangle, \quad d\eta = -\langle S, g\rangle .

lq FTRL (:class:`~refmem.retentions.lq_moneta.LqMoneta`), :math:`A = \alpha\nabla\psi_q(M) - \eta g`,
:math:`M' = \nabla\psi_{q^*}(A)` with :math:`\psi_q = \tfrac12\|\cdot\|_q^2`: both maps are gradients, so
their Jacobians are symmetric (Hessians of :math:`\psi`, :func:`lq_mirror_jacobian_product`) and

.. math::

    dA = \nabla^2\psi_{q^*}(A)\,S, \quad dM = \alpha\,\nabla^2\psi_q(M)\,dA, \quad dg = -\eta\,dA, \quad
    d\alpha = \langle dA, \nabla\psi_q(M)\rangle, \quad d\eta = -\langle dA, g\rangle .

KL on the scaled simplex (:class:`~refmem.retentions.kl_simplex.KLSimplex`),
:math:`Z = (1-\lambda)\log M - \eta' g`, :math:`M' = c\,\mathrm{softmax}_{\rm row}(Z)`,
:math:`\eta' = a\eta/(a + \eta)`, :math:`1 - \lambda = a/(a + \eta)`:

.. math::

    dZ = M' \odot \big(S - \tfrac1c \textstyle\sum_j S_{\cdot j} M'_{\cdot j}\big), \quad
    dM = (1-\lambda)\, dZ / M, \quad dg = -\eta'\, dZ,

    d\eta = \frac{a^2}{(a+\eta)^2}\langle dZ, -g\rangle - \frac{a}{(a+\eta)^2}\langle dZ, \log M\rangle .
"""

from __future__ import annotations

import math

from ..linalg import inner, sign
from ..retentions.kl_simplex import softmax_rows
from ..retentions.lq_moneta import dual_exponent, lq_link, lq_mirror, lq_norm
from ..validation import expand_matrix


def forget_gate_step(M, g, alpha, eta, xp):
    """``alpha M - eta g``: ``[..., m, n]`` with gates ``[...]``."""
    return expand_matrix(alpha, xp) * M - expand_matrix(eta, xp) * g


def forget_gate_step_vjp(S, M, g, alpha, eta, xp):
    """Adjoint of :func:`forget_gate_step` (module docstring)."""
    return expand_matrix(alpha, xp) * S, -expand_matrix(eta, xp) * S, {"alpha": inner(S, M, xp), "eta": -inner(S, g, xp)}


def lq_mirror_jacobian_product(X, Y, q, xp):
    r""":math:`\nabla^2\psi_q(X)\,Y`, the Jacobian of :func:`~refmem.retentions.lq_moneta.lq_mirror` applied to ``Y``.

    Notes
    -----
    With :math:`n = \|X\|_q`, :math:`R = |X|/n` and :math:`P = \mathrm{sign}(X) R^{q-1}`
    (so that :math:`\nabla\psi_q(X) = nP`),

    .. math::

        \nabla^2\psi_q(X)\,Y = (q-1)\,R^{q-2} \odot Y + (2-q)\,P\,\langle P, Y\rangle,

    symmetric in ``Y`` (a Hessian), of degree 0 in ``X`` (written in ``R`` so that
    nothing over- or underflows). At ``X = 0`` the map is 1-homogeneous and not
    differentiable for ``q != 2``, but its partial derivatives exist
    (:math:`\nabla\psi_q(tE_{ij}) = tE_{ij}`): the product there is ``Y``, the vector
    of partial derivatives. For ``q < 2`` a zero entry of a non-zero ``X`` has an
    infinite derivative (:math:`R^{q-2}`): the product is ``inf`` there.
    """
    n = lq_norm(X, q, xp)  # (..,)
    zero = expand_matrix(n == 0, xp)  # (.., 1, 1)
    R = xp.abs(X) / expand_matrix(xp.where(n > 0, n, xp.ones_like(n)), xp)  # (.., m, n) in [0, 1]
    positive = R > 0
    safe_R = xp.where(positive, R, xp.ones_like(R))
    at_zero = 0.0 if q > 2 else (1.0 if q == 2 else math.inf)  # R^{q-2} at R = 0
    curv = xp.where(positive, (q - 1) * safe_R ** (q - 2), xp.full_like(R, (q - 1) * at_zero))  # (.., m, n)
    P = sign(X, xp) * R ** (q - 1)  # (.., m, n)
    infinite = xp.isinf(curv)
    finite_curv = xp.where(infinite, xp.zeros_like(curv), curv)  # no inf * 0 below
    diag = xp.where(infinite & (Y != 0), xp.full_like(Y, math.inf), finite_curv * Y)  # an infinite derivative Y reaches
    out = diag + (2 - q) * P * expand_matrix(inner(P, Y, xp), xp)  # (.., m, n)
    return xp.where(zero, Y, out)


def lq_step(M, g, alpha, eta, q, xp):
    r""":math:`\nabla\psi_{q^*}(\alpha\nabla\psi_q(M) - \eta g)`: Moneta's explicit step (consistent FTRL form)."""
    A = expand_matrix(alpha, xp) * lq_mirror(M, q, xp) - expand_matrix(eta, xp) * g  # (.., m, n)
    return lq_link(A, q, xp)


def lq_step_vjp(S, M, g, alpha, eta, q, xp):
    """Adjoint of :func:`lq_step` (module docstring)."""
    P = lq_mirror(M, q, xp)  # grad psi_q(M), (.., m, n)
    A = expand_matrix(alpha, xp) * P - expand_matrix(eta, xp) * g  # (.., m, n)
    dA = lq_mirror_jacobian_product(A, S, dual_exponent(q), xp)  # (.., m, n)
    if q > 2 and bool(xp.any(xp.isinf(dA))):
        raise ValueError("the lq step has no derivative here: an accumulator entry is exactly 0 (the state entry and "
                         "its gradient both 0), where the link grad psi_q* (q* < 2) has an infinite slope; e.g. "
                         "the deep memory's default start W1 = 0 makes W2's gradient 0; start from a state "
                         "without zero entries")
    dM = expand_matrix(alpha, xp) * lq_mirror_jacobian_product(M, dA, q, xp)
    return dM, -expand_matrix(eta, xp) * dA, {"alpha": inner(dA, P, xp), "eta": -inner(dA, g, xp)}


def kl_step(M, g, eta, a, c, xp):
    r""":math:`c\,\mathrm{softmax}_{\rm row}((1-\lambda)\log M - \eta' g)`: Memora's explicit step."""
    keep = a / (a + eta)  # 1 - lambda, (..,)
    step = a * eta / (a + eta)  # eta', (..,)
    Z = expand_matrix(keep, xp) * xp.log(M) - expand_matrix(step, xp) * g  # (.., m, n)
    return c * softmax_rows(Z, xp)


def kl_step_vjp(S, M, g, eta, a, c, xp):
    """Adjoint of :func:`kl_step` (module docstring)."""
    keep = a / (a + eta)  # (..,)
    step = a * eta / (a + eta)
    logM = xp.log(M)  # (.., m, n)
    Y = c * softmax_rows(expand_matrix(keep, xp) * logM - expand_matrix(step, xp) * g, xp)  # the new state
    dZ = Y * (S - xp.sum(S * Y, axis=-1, keepdims=True) / c)  # the scaled softmax's adjoint, row by row
    d_keep, d_step = inner(dZ, logM, xp), -inner(dZ, g, xp)  # (..,)
    deta = d_step * (a / (a + eta)) ** 2 - d_keep * a / (a + eta) ** 2  # through eta' and 1 - lambda
    return expand_matrix(keep, xp) * dZ / M, -expand_matrix(step, xp) * dZ, {"eta": deta}
