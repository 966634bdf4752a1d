r"""The residual MLP of the deep memory, its forward pass and its hand-written backward pass (Titans; Miras).

.. math::

    \mathcal M(x) = x + W_1\, \sigma(W_2 x), \qquad
    W_1 \in \mathbb R^{d \times h},\; W_2 \in \mathbb R^{h \times d},

with an attentional bias :math:`\ell` on the residual ``r = M(k) - v``
(:class:`ResidualLoss`). Gradients (chain rule, written out in
:func:`mlp_forward`'s backward closure): with :math:`z = W_2 x`,
:math:`a = \sigma(z)`, :math:`u = \partial\ell/\partial r`,

.. math::

    \nabla_{W_1} l = u\, a^T, \qquad
    \nabla_{W_2} l = \big((W_1^T u) \odot \sigma'(z)\big)\, x^T, \qquad
    \nabla_x = u + W_2^T \big((W_1^T u) \odot \sigma'(z)\big).

They are checked against central finite differences with a derived tolerance
(``refmem verify`` spec ``deep_memory``, and the tests of that spec).
The level step and the scan are in :mod:`refmem.memories.deep_memory`; the
curvature bounds its solvers use in :mod:`refmem.memories.deep_curvature`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np  # randomness only (make_initial_state)

from ..linalg import clip, matvec, outer, sign
from ..validation import check_arrays, require, same_dtype

# --------------------------------------------------------------------------- activations


def _tanh(z, xp):
    return xp.tanh(z)


def _dtanh(z, xp):
    t = xp.tanh(z)
    return 1 - t * t


def logistic(z, xp):
    r"""The logistic sigmoid :math:`1 / (1 + e^{-z})`, from :math:`e^{-|z|}` (never overflows: it is at most 1)."""
    e = xp.exp(-xp.abs(z))  # (...) in (0, 1]
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _silu(z, xp):
    return z * logistic(z, xp)


def _dsilu(z, xp):
    s = logistic(z, xp)
    return s + z * s * (1 - s)


def _d2tanh(z, xp):
    t = xp.tanh(z)
    return -2 * t * (1 - t * t)


def _d2silu(z, xp):
    s = logistic(z, xp)
    return s * (1 - s) * (2 + z * (1 - 2 * s))


# name -> sigma'': the Hessian-vector products of the deep memory's backward pass read it
SECOND_DERIVATIVES = {"tanh": _d2tanh, "silu": _d2silu}

# name -> (sigma, sigma', sup|sigma'|, sup|sigma''|): the bounds size the finite-difference
# tolerance and the solvers' Lipschitz estimates (tanh'' peaks at 4/(3 sqrt 3); silu' <= 1.1, silu'' <= 1/2).
ACTIVATIONS = {
    "tanh": (_tanh, _dtanh, 1.0, 4 / (3 * math.sqrt(3))),
    "silu": (_silu, _dsilu, 1.1, 0.5),
}


def activation_of(name):
    """``(sigma, sigma', sup|sigma'|, sup|sigma''|)`` of the activation ``name``."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}; got {name!r}")
    return ACTIVATIONS[name]


# --------------------------------------------------------------------------- attentional bias on r


@dataclass(frozen=True)
class ResidualLoss:
    r"""An attentional bias :math:`\ell(r)` on the residual ``r = M(k) - v`` with its gradient ``u = d ell / dr``.

    Parameters
    ----------
    name : {"l2", "lp", "huber"}
    p : float
        Exponent of ``lp`` (``>= 1``).
    delta : float
        Threshold of ``huber`` (``> 0``).

    Notes
    -----
    .. math::

        \ell_2 = \tfrac12\|r\|^2,\ u = r; \qquad
        \ell_p = \sum_i |r_i|^p,\ u = p\,\mathrm{sign}(r)|r|^{p-1}; \qquad
        \ell_{H} = \sum_i \begin{cases} r_i^2/2 & |r_i| \le \delta \\ \delta(|r_i| - \delta/2) & \text{else}\end{cases},\
        u = \mathrm{clip}(r, -\delta, \delta).

    These are the linear-memory objectives of MATH.md 3 (``l2``, ``lp``,
    per-coordinate ``huber``) read on the residual: for ``M(k) = M k`` the
    gradient in ``M`` is ``u k^T``.
    """

    name: str = "l2"
    p: float = 2.0
    delta: float = 1.0

    def __post_init__(self):
        if self.name not in ("l2", "lp", "huber"):
            raise ValueError(f"loss must be 'l2', 'lp' or 'huber'; got {self.name!r}")
        if not (isinstance(self.p, (int, float)) and math.isfinite(self.p) and self.p >= 1):
            raise ValueError(f"p must be a finite number >= 1; got {self.p!r}")
        if not (isinstance(self.delta, (int, float)) and math.isfinite(self.delta) and self.delta > 0):
            raise ValueError(f"delta must be a finite number > 0; got {self.delta!r}")

    @property
    def smooth(self) -> bool:
        """``grad`` is Lipschitz (``l2``, ``huber``, ``lp`` with ``p >= 2``)."""
        return self.name != "lp" or self.p >= 2

    def value(self, r, xp):
        """``ell(r)`` per batch element ``[...]``."""
        if self.name == "l2":
            return 0.5 * xp.sum(r * r, axis=-1)
        if self.name == "lp":
            return xp.sum(xp.abs(r) ** self.p, axis=-1)
        a = xp.abs(r)
        return xp.sum(xp.where(a <= self.delta, 0.5 * r * r, self.delta * (a - 0.5 * self.delta)), axis=-1)

    def grad(self, r, xp):
        """``u = d ell / dr``: ``[..., d]``."""
        if self.name == "l2":
            return r
        if self.name == "lp":
            return self.p * sign(r, xp) * xp.abs(r) ** (self.p - 1)
        return clip(r, -self.delta, self.delta, xp)

    def grad_derivative(self, r, xp):
        r"""``d u_i / d r_i``, the diagonal Hessian of ``ell``: ``[..., d]``.

        ``l2``: 1; ``lp``: :math:`p(p-1)|r|^{p-2}` (``p = 1``: 0 away from the kink;
        ``1 < p < 2``: infinite at ``r_i = 0``); ``huber``: 1 inside ``|r_i| <= delta``, 0 outside.
        """
        one = xp.ones_like(r)
        if self.name == "l2":
            return one
        if self.name == "huber":
            return xp.where(xp.abs(r) <= self.delta, one, 0 * one)
        if self.p == 1:
            return 0 * one
        a = xp.abs(r)
        if self.p >= 2:
            return self.p * (self.p - 1) * a ** (self.p - 2)
        safe = xp.where(a > 0, a, one)  # |r|^{p-2} at r = 0 is infinite for p < 2
        return xp.where(a > 0, self.p * (self.p - 1) * safe ** (self.p - 2), math.inf * one)

    def curvature(self, r_max: float) -> float:
        """Bound on the Hessian of ``ell`` for residual entries up to ``r_max`` in size."""
        if self.name == "lp":
            return self.p * (self.p - 1) * max(r_max, 1.0) ** (self.p - 2) if self.p >= 2 else math.inf
        return 1.0

    def third(self, r_max: float) -> float:
        """Bound on ``|d^3 ell / dr_i^3|`` for residual entries up to ``r_max`` (``huber``: 0 away from the kinks)."""
        if self.name == "lp":
            p = self.p
            return abs(p * (p - 1) * (p - 2)) * max(r_max, 1.0) ** max(p - 3, 0.0)
        return 0.0


def residual_loss(loss) -> ResidualLoss:
    """``loss`` as a :class:`ResidualLoss`: an instance, a name, or ``None`` (``l2``)."""
    if loss is None:
        return ResidualLoss("l2")
    if isinstance(loss, ResidualLoss):
        return loss
    if isinstance(loss, str):
        return ResidualLoss(loss)
    raise TypeError(f"loss must be a ResidualLoss, 'l2', 'lp', 'huber' or None; got {type(loss).__name__}")


# --------------------------------------------------------------------------- forward / backward


def mlp_forward(W1, W2, x, xp, activation="tanh"):
    r"""``y = x + W1 sigma(W2 x)`` and a closure computing the backward pass.

    Parameters
    ----------
    W1 : array ``[..., d, h]``
    W2 : array ``[..., h, d]``
    x : array ``[..., d]``

    Returns
    -------
    y : array ``[..., d]``
    backward : callable ``gy [..., d] -> (gW1 [..., d, h], gW2 [..., h, d], gx [..., d])``
        The chain rule for ``dL/dy = gy``.
    """
    sigma, dsigma, _, _ = activation_of(activation)
    z = matvec(W2, x)  # (.., h, d) @ (.., d) -> (.., h)
    a = sigma(z, xp)  # (.., h)
    y = x + matvec(W1, a)  # (.., d) + (.., d, h) @ (.., h)

    def backward(gy):
        gW1 = outer(gy, a)  # dL/dW1 = gy a^T: (.., d, h)
        ga = matvec(xp.matrix_transpose(W1), gy)  # dL/da = W1^T gy: (.., h)
        gz = ga * dsigma(z, xp)  # dL/dz = dL/da * sigma'(z): (.., h)
        gW2 = outer(gz, x)  # dL/dW2 = gz x^T: (.., h, d)
        gx = gy + matvec(xp.matrix_transpose(W2), gz)  # residual path + W2^T gz: (.., d)
        return gW1, gW2, gx

    return y, backward


def deep_loss_grad_vjp(W1, W2, k, v, loss, G1, G2, xp, activation="tanh"):
    r"""Second derivatives of the deep loss: the gradient of :math:`\langle G, \nabla_W l(W; k, v)\rangle` in ``W, k, v``.

    The backward pass of the map :math:`(W, k, v) \mapsto \nabla_W l`: what the
    deep memory's own backward needs, since its step reads :math:`\nabla_W l`.

    Parameters
    ----------
    W1 : array ``[..., d, h]``
    W2 : array ``[..., h, d]``
    k, v : array ``[..., d]``
    loss : ResidualLoss
    G1 : array ``[..., d, h]``
    G2 : array ``[..., h, d]``
        The cotangent ``G = (G1, G2)`` of :math:`\nabla_W l`.

    Returns
    -------
    dW1 [..., d, h], dW2 [..., h, d], dk [..., d], dv [..., d]
        ``(dW1, dW2)`` is the Hessian-vector product :math:`\nabla^2_{WW} l\, G`.

    Notes
    -----
    Forward over reverse, written out: the backward pass of :func:`mlp_forward`
    (module docstring) differentiated along the weight direction ``G``
    (a tangent, marked with a dot; :math:`\dot W = G`, :math:`\dot k = \dot v = 0`):

    .. math::

        \dot z = G_2 k,\quad \dot a = \sigma'(z)\dot z,\quad \dot r = G_1 a + W_1 \dot a,\quad
        \dot u = \ell''(r)\,\dot r,

        \dot{g}_{W_1} = \dot u\, a^T + u\, \dot a^T,\quad
        \dot{g}_a = G_1^T u + W_1^T \dot u,\quad
        \dot{g}_z = \dot g_a \odot \sigma'(z) + g_a \odot \sigma''(z) \odot \dot z,\quad
        \dot{g}_{W_2} = \dot g_z\, k^T,

        \dot g_k = \dot u + G_2^T g_z + W_2^T \dot g_z, \qquad \dot g_v = -\dot u .

    :math:`(\dot g_{W_1}, \dot g_{W_2}) = \nabla^2_{WW} l\, G` (a Hessian-vector
    product), and by the symmetry of mixed second derivatives
    :math:`\dot g_k = \nabla_k \langle G, \nabla_W l\rangle`, :math:`\dot g_v = \nabla_v \langle G, \nabla_W l\rangle`.
    ``ell''`` is :meth:`ResidualLoss.grad_derivative` (diagonal: every bias here is per coordinate).
    """
    sigma, dsigma, _, _ = activation_of(activation)
    d2sigma = SECOND_DERIVATIVES[activation]
    mT = xp.matrix_transpose
    z = matvec(W2, k)  # (.., h)
    a = sigma(z, xp)  # (.., h)
    r = k + matvec(W1, a) - v  # the residual M(k) - v: (.., d)
    u = loss.grad(r, xp)  # (.., d)
    ga = matvec(mT(W1), u)  # (.., h)
    s1, s2 = dsigma(z, xp), d2sigma(z, xp)  # (.., h)
    gz = ga * s1  # (.., h)
    z_dot = matvec(G2, k)  # (.., h)
    a_dot = s1 * z_dot  # (.., h)
    u_dot = loss.grad_derivative(r, xp) * (matvec(G1, a) + matvec(W1, a_dot))  # (.., d)
    dW1 = outer(u_dot, a) + outer(u, a_dot)  # (.., d, h)
    ga_dot = matvec(mT(G1), u) + matvec(mT(W1), u_dot)  # (.., h)
    gz_dot = ga_dot * s1 + ga * s2 * z_dot  # (.., h)
    dW2 = outer(gz_dot, k)  # (.., h, d)
    dk = u_dot + matvec(mT(G2), gz) + matvec(mT(W2), gz_dot)  # (.., d)
    return dW1, dW2, dk, -u_dot


def deep_loss(W1, W2, k, v, loss, xp, activation="tanh"):
    """``l(W; k, v) = ell(M(k) - v)`` per batch element ``[...]``."""
    y, _ = mlp_forward(W1, W2, k, xp, activation)
    return loss.value(y - v, xp)


def deep_loss_grad(W1, W2, k, v, loss, xp, activation="tanh"):
    """``(l, grad_W1 l, grad_W2 l)`` by the hand-written backward pass."""
    y, backward = mlp_forward(W1, W2, k, xp, activation)
    r = y - v  # (.., d)
    gW1, gW2, _ = backward(loss.grad(r, xp))
    return loss.value(r, xp), gW1, gW2


# --------------------------------------------------------------------------- the weights


def check_params(params, d, xp, dtype, name="initial_state", batch=None):
    """Validate ``(W1 [..., d, h], W2 [..., h, d])`` (batch dims ``batch`` when given); return ``(W1, W2)``."""
    if not isinstance(params, tuple) or len(params) != 2:
        raise TypeError(f"{name} for the deep memory must be a pair (W1 [..., d, h], W2 [..., h, d])")
    W1, W2 = params
    named = {f"{name}[0] (W1)": W1, f"{name}[1] (W2)": W2}
    require(**named)
    check_arrays(**named)
    if not same_dtype(W1.dtype, dtype):
        raise TypeError(f"{name} has dtype {W1.dtype} but the inputs have {dtype}")
    if W1.ndim < 2 or W2.ndim < 2 or W1.shape[-2] != d or W2.shape[-1] != d or W1.shape[-1] != W2.shape[-2]:
        raise ValueError(f"{name} must be (W1 [..., {d}, h], W2 [..., h, {d}]) with one hidden size h; "
                         f"got {tuple(W1.shape)}, {tuple(W2.shape)}")
    if batch is not None and (tuple(W1.shape[:-2]) != tuple(batch) or tuple(W2.shape[:-2]) != tuple(batch)):
        raise ValueError(f"{name} must have the batch dims of the inputs {tuple(batch)}; "
                         f"got {tuple(W1.shape)}, {tuple(W2.shape)}")
    return W1, W2


def default_params(batch, d, h, xp, dtype):
    """``W1 = 0 [..., d, h]``, ``W2 = I_{h x d} [..., h, d]`` (``M`` starts as the identity map)."""
    W1 = xp.zeros(tuple(batch) + (d, h), dtype=dtype)
    W2 = xp.zeros(tuple(batch) + (h, d), dtype=dtype) + xp.eye(h, d, dtype=dtype)
    return W1, W2


def make_initial_state(seed, batch, d, xp, dtype="float64", *, h=None):
    """Random ``(W1, W2)`` of scale ``1/sqrt(fan_in)``."""
    h = d if h is None else h
    g = np.random.default_rng(seed)
    W1 = g.standard_normal(tuple(batch) + (d, h)) / np.sqrt(h)
    W2 = g.standard_normal(tuple(batch) + (h, d)) / np.sqrt(d)
    return xp.asarray(np.asarray(W1, dtype=dtype)), xp.asarray(np.asarray(W2, dtype=dtype))


def pack_weights(W1, W2, xp):
    """The solvers' variable, one matrix: ``[W1; W2]`` ``[..., 2d, d]`` when ``h = d``, else ``[W1 | W2^T]`` ``[..., d, 2h]``.

    With ``h = d`` every row of the packed matrix is a row of ``W1`` or of ``W2``,
    so row-wise constraints (the KL retention's simplex rows, kept by mirror
    descent) hold for the packed variable exactly when they hold for both matrices.
    """
    if W1.shape[-1] == W1.shape[-2]:
        return xp.concat([W1, W2], axis=-2)
    return xp.concat([W1, xp.matrix_transpose(W2)], axis=-1)


def unpack_weights(X, h, d, xp):
    """``(W1 [..., d, h], W2 [..., h, d])`` from the packed variable of :func:`pack_weights`."""
    if h == d:
        return X[..., :d, :], X[..., d:, :]
    return X[..., :h], xp.matrix_transpose(X[..., h:])
