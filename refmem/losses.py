r"""Losses on a layer output ``y`` with hand-written ``dL/dy``: the local surprise (NL-4, MATH.md 2a).

For a one-layer MLP ``y = W x`` the gradient of any loss in ``W`` factorises as
``grad_W L = u x^T`` with ``u = dL/dy``: the paper's *local surprise signal*.
This module gives two losses, each with its value and its gradient in ``y``
written out by hand (no automatic differentiation), on batched outputs
``y [..., d_out]``:

- :class:`SquaredError`: :math:`L = \tfrac12\|y - t\|^2`, :math:`u = y - t`;
- :class:`SoftmaxCrossEntropy`: :math:`L = -\sum_i p_i \log \mathrm{softmax}_i(y)`,
  :math:`u = (\sum_i p_i)\,\mathrm{softmax}(y) - p`.

Both gradients are checked against central finite differences (``tests/test_losses.py``,
``refmem verify`` spec ``mlp_local_surprise``), with the tolerance derived from
:meth:`Loss.third_derivative_bound` (truncation) and rounding.
"""

from __future__ import annotations

import abc

from .linalg import sign
from .validation import as_param, check_arrays, check_ndim, check_nonempty, dtype_name, get_option, require


class Loss(abc.ABC):
    """A differentiable loss ``L(y; target)`` on outputs ``y [..., d_out]``.

    Attributes
    ----------
    name : str
        Registry name (``"squared_error"``, ``"softmax_cross_entropy"``).
    """

    name = "loss"

    def value(self, y, target):
        """``L(y; target)`` per batch element: ``[...]`` (``y`` and ``target`` broadcast)."""
        xp = self._check(y, target)
        return self._value(y, target, xp)

    def grad(self, y, target):
        """The local surprise ``u = dL/dy``: ``[..., d_out]``."""
        xp = self._check(y, target)
        return self._grad(y, target, xp)

    @abc.abstractmethod
    def _value(self, y, target, xp):
        """Value without validation."""

    @abc.abstractmethod
    def _grad(self, y, target, xp):
        """Gradient in ``y`` without validation."""

    def curvature(self, target):
        """An upper bound ``[...]`` on the spectral norm of the Hessian ``d^2L/dy^2`` (Lipschitz constant of ``u``)."""
        return self._curvature(target, self._check_target(target))

    def third_derivative_bound(self, target):
        """An upper bound ``[...]`` on ``|d^3/ds^3 L(y + s e_i)|`` along any coordinate direction ``e_i``."""
        return self._third(target, self._check_target(target))

    def _check_target(self, target):
        """``target [..., d_out]``: a real floating array, finite; returns its namespace."""
        xp = check_arrays(target=target)
        check_ndim(target, "target", 1, "[..., d_out]")
        check_nonempty(target, "target")
        return xp

    @abc.abstractmethod
    def _curvature(self, target, xp):
        """See :meth:`curvature`."""

    @abc.abstractmethod
    def _third(self, target, xp):
        """See :meth:`third_derivative_bound`."""

    def value_rounding_bound(self, y, target):
        r"""A bound ``[...]`` on the absolute rounding error of one computed :meth:`value` at ``y``.

        Notes
        -----
        Both losses are sums of ``d`` terms built from ``y``, ``target`` and (for
        cross-entropy) :math:`\mathrm{lse}(y) \le \max|y| + \log d`; a sum of ``d``
        terms carries at most :math:`(d + 2)\,\epsilon` times the sum of the
        terms' moduli, and rounding ``y`` itself (as finite differences do when
        forming ``y + h e_i``) moves the value by at most
        :math:`\epsilon \max|y|\,\|u\|_1`. With a safety factor 8:

        .. math::

            \delta = 8 (d + 2)\,\epsilon\,\big[(1 + \|t\|_1)(1 + \max|y|) + |L| + \max|y|\,\|u\|_1\big] .
        """
        xp = self._check(y, target)
        d = y.shape[-1]
        eps = float(xp.finfo(y.dtype).eps)
        y_max = xp.max(xp.abs(y), axis=-1)  # (..,)
        t_l1 = xp.sum(xp.abs(target), axis=-1)  # (..,)
        u_l1 = xp.sum(xp.abs(self._grad(y, target, xp)), axis=-1)  # (..,)
        scale = (1 + t_l1) * (1 + y_max) + xp.abs(self._value(y, target, xp)) + y_max * u_l1
        return 8 * (d + 2) * eps * scale

    def _check(self, y, target):
        require(y=y, target=target)
        xp = check_arrays(y=y, target=target)
        check_ndim(y, "y", 1, "[..., d_out]")
        check_ndim(target, "target", 1, "[..., d_out]")
        check_nonempty(y, "y")
        check_nonempty(target, "target")
        if target.shape[-1] != y.shape[-1]:
            raise ValueError(f"target has last dimension {target.shape[-1]} but y has d_out = {y.shape[-1]}")
        return xp

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SquaredError(Loss):
    r"""Squared error :math:`L(y; t) = \tfrac12\|y - t\|^2`.

    Notes
    -----
    .. math::

        u = \frac{\partial L}{\partial y} = y - t, \qquad
        \frac{\partial^2 L}{\partial y^2} = I, \qquad \frac{\partial^3 L}{\partial y^3} = 0 .

    With ``y = W x`` this is least squares in ``W``, and a GD step on it is
    the delta rule with key ``x`` and value ``t`` (MATH.md 2a, 5).
    """

    name = "squared_error"

    def _value(self, y, target, xp):
        r = y - target  # (.., d_out)
        # 1/2 ||r||^2 through the scaled norm m ||r / m||: r*r would overflow (and warn) from |r| ~ 1e154 on,
        # while the value is representable up to ||r|| ~ 1e154 * sqrt(2); beyond, the value itself is not
        m = xp.max(xp.abs(r), axis=-1)  # (..,)
        safe = xp.where((m > 0) & xp.isfinite(m), m, xp.ones_like(m))
        n = safe * xp.sqrt(xp.sum((r / safe[..., None]) ** 2, axis=-1))  # (..,) ||r||
        big = float(xp.finfo(r.dtype).max) ** 0.5  # ||r|| above sqrt(2 max) has no finite 1/2 ||r||^2
        if get_option("check_finite") and bool(xp.any(n >= big)):
            raise ValueError(f"y - target is too large for {dtype_name(r.dtype)}: the squared error "
                             f"1/2 ||y - target||^2 exceeds its largest number (||y - target|| up to {big:.1e} is representable)")
        return 0.5 * (n * n)

    def _grad(self, y, target, xp):
        return y - target  # (.., d_out)

    def _curvature(self, target, xp):
        return xp.ones(target.shape[:-1], dtype=target.dtype)

    def _third(self, target, xp):
        return xp.zeros(target.shape[:-1], dtype=target.dtype)


class SoftmaxCrossEntropy(Loss):
    r"""Softmax cross-entropy :math:`L(y; p) = -\sum_i p_i \log\mathrm{softmax}_i(y)`.

    ``target`` holds non-negative class weights ``p`` (a one-hot label or a
    probability vector; unnormalised weights are allowed and weight the loss).

    Notes
    -----
    With :math:`s = \mathrm{softmax}(y)` and :math:`\mathrm{lse}(y) = \log\sum_i e^{y_i}`:

    .. math::

        L = \Big(\sum_i p_i\Big)\,\mathrm{lse}(y) - \langle p, y\rangle, \qquad
        u = \frac{\partial L}{\partial y} = \Big(\sum_i p_i\Big)\, s - p .

    The Hessian :math:`(\sum p)(\mathrm{diag}(s) - s s^T)` has spectral norm at
    most :math:`\tfrac12 \sum p` (Gershgorin: row ``i`` has centre
    :math:`s_i(1-s_i)` and radius :math:`s_i\sum_{j\ne i}s_j = s_i(1-s_i)`,
    so every eigenvalue is at most :math:`\max_i 2 s_i(1 - s_i) \le \tfrac12`).
    Along a coordinate, :math:`\frac{d^3}{d\sigma^3}\mathrm{lse}(y + \sigma e_i) = s_i(1-s_i)(1-2s_i)`,
    whose modulus is at most :math:`1/(6\sqrt3)` (maximised at
    :math:`s_i = \tfrac12 \pm \tfrac{1}{2\sqrt3}`).

    ``lse`` is evaluated as :math:`m + \log\sum_i e^{y_i - m}` with
    :math:`m = \max_i y_i`, which neither overflows nor underflows to ``log 0``.
    """

    name = "softmax_cross_entropy"

    def _check(self, y, target):
        xp = super()._check(y, target)
        as_param(target, "target", xp, target.dtype, low=0.0)  # class weights must be >= 0
        return xp

    def _check_target(self, target):
        xp = super()._check_target(target)
        as_param(target, "target", xp, target.dtype, low=0.0)  # class weights must be >= 0
        return xp

    @staticmethod
    def _shifted(y, xp):
        m = xp.max(y, axis=-1, keepdims=True)  # (.., 1): shift so the largest exponent is 0
        e = xp.exp(y - m)  # (.., d_out), entries in (0, 1]
        return m, e, xp.sum(e, axis=-1, keepdims=True)  # (.., 1) ; sum >= 1

    def _value(self, y, target, xp):
        m, _, z = self._shifted(y, xp)
        lse = (m + xp.log(z))[..., 0]  # (..,)
        return xp.sum(target, axis=-1) * lse - xp.sum(target * y, axis=-1)

    def _grad(self, y, target, xp):
        _, e, z = self._shifted(y, xp)
        s = e / z  # (.., d_out) softmax
        return xp.sum(target, axis=-1, keepdims=True) * s - target

    def _curvature(self, target, xp):
        return 0.5 * xp.sum(target, axis=-1)

    def _third(self, target, xp):
        return xp.sum(target, axis=-1) / (6.0 * 3.0 ** 0.5)


def finite_difference_surprise(loss, y, target, h: float = 1e-5):
    r"""Central-difference estimate of ``u = dL/dy`` and a bound on its error (the independent check of ``grad``).

    Parameters
    ----------
    loss : Loss or str
    y : array ``[..., d_out]``
    target : array ``[..., d_out]`` (same shape as ``y``)
    h : float
        Difference step; ``1e-5`` balances truncation and rounding in float64.

    Returns
    -------
    u_fd : array ``[..., d_out]``
    bound : array ``[...]``
        Per batch element, a bound on ``max_i |u_fd_i - u_i|``:
        :math:`\tfrac{h^2}{6}T_3 + \delta/h` (:func:`refmem.finite_differences.central_difference_bound`),
        :math:`T_3` from :meth:`Loss.third_derivative_bound`, :math:`\delta`
        from :meth:`Loss.value_rounding_bound` taken at the larger of ``|y| + h``.
    """
    from .finite_differences import central_difference_bound, central_gradient

    loss = get_loss(loss)
    xp = loss._check(y, target)
    if tuple(y.shape) != tuple(target.shape):
        raise ValueError(f"target must have the shape of y {tuple(y.shape)}; got {tuple(target.shape)}")
    t_e = xp.expand_dims(target, axis=target.ndim - 1)  # (.., 1, d_out): broadcasts over the perturbed copies
    u_fd = central_gradient(lambda Y: loss._value(Y, t_e, xp), y, h, ndim=1)
    y_far = y + h * sign(y, xp) + h * xp.astype(y == 0, y.dtype)  # |y| + h: the perturbed points lie within it
    bound = central_difference_bound(h, loss._third(target, xp), 0.0) + (
        xp.maximum(loss.value_rounding_bound(y, target), loss.value_rounding_bound(y_far, target)) / h
    )
    return u_fd, bound


LOSSES: dict[str, type[Loss]] = {"squared_error": SquaredError, "softmax_cross_entropy": SoftmaxCrossEntropy}


def get_loss(loss) -> Loss:
    """A :class:`Loss` instance from an instance or a registry name."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss]()
    raise ValueError(f"loss must be a Loss instance or one of {sorted(LOSSES)}; got {loss!r}")


__all__ = ["Loss", "SquaredError", "SoftmaxCrossEntropy", "LOSSES", "get_loss", "finite_difference_surprise"]
