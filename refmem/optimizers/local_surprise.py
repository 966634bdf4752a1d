r"""Training a one-layer MLP is a memory of local surprise (NL-2..6, MATH.md 2a).

A layer ``y = W x`` trained by gradient descent on a loss ``L(y)`` takes the step

.. math::

    W_{t+1} = W_t - \eta_{t+1}\, \nabla_W L(W_t; x_{t+1})
            = W_t - \eta_{t+1}\, u_{t+1} x_{t+1}^T, \qquad
    u_{t+1} = \frac{\partial L}{\partial y}\Big|_{y = W_t x_{t+1}}          \quad \text{(NL-3, NL-4)}

which is the solution of the level

.. math::

    W_{t+1} = \operatorname*{argmin}_W\; \langle W x_{t+1}, u_{t+1}\rangle
              + \frac{1}{2\eta_{t+1}}\|W - W_t\|^2 .                            \quad \text{(NL-5)}

The memory's key is the input ``x``, its "value" the local surprise ``u``,
its objective the dot product, its retention the local l2 term.

Sign convention. refmem's :class:`~refmem.objectives.Dot` is the Hebbian
:math:`l(M; k, v) = -\langle M k, v\rangle` (a memory that *agrees* with its
values), while NL-5's objective is :math:`+\langle W x, u\rangle`. The level
therefore uses key :math:`k = x` and value :math:`v = -u`
(:func:`surprise_value`): :math:`-\langle W x, -u\rangle = \langle W x, u\rangle`.

Erratum (NL-6). The paper restates NL-5 as
:math:`\operatorname{argmin}_W \langle W x_t, \nabla_{y_{t+1}} L(W_t; x_{t+1})\rangle + \dots`,
with the key :math:`x_t` of the *previous* sample; :math:`x_{t+1}` is meant.
:func:`nl6_printed_step` evaluates the printed form; it differs from the GD step
unless :math:`x_t = x_{t+1}` (``tests/test_local_surprise.py``).
"""

from __future__ import annotations

from ..level import Level, solve
from ..linalg import matvec, outer
from ..losses import get_loss
from ..objectives import Dot
from ..retentions import LocalL2
from ..validation import check_arrays, check_batch_shape, check_ndim, require


def _check_layer(W, x, *, W_name="W", x_name="x"):
    """``W [..., d_out, d_in]`` and ``x [..., d_in]``, named as the caller calls them; returns ``xp``."""
    require(**{W_name: W, x_name: x})
    xp = check_arrays(**{W_name: W, x_name: x})
    check_ndim(W, W_name, 2, "[..., d_out, d_in]")
    check_ndim(x, x_name, 1, "[..., d_in]")
    if x.shape[-1] != W.shape[-1]:
        raise ValueError(f"{x_name} has length {x.shape[-1]} but {W_name} has d_in = {W.shape[-1]} "
                         f"({W_name} is [..., d_out, d_in])")
    return xp


def _check_step(W_t, x, eta, *, x_name="x"):
    """The inputs of one step: the layer, and ``eta`` a number or an array broadcastable to ``W_t``'s batch dims."""
    _check_layer(W_t, x, W_name="W_t", x_name=x_name)
    if hasattr(eta, "shape"):
        check_batch_shape(eta, "eta", tuple(W_t.shape[:-2]), "the batch dims of W_t")


def layer_output(W, x):
    """``y = W x``: ``[..., d_out, d_in] @ [..., d_in] -> [..., d_out]``."""
    _check_layer(W, x)
    return matvec(W, x)  # (.., d_out, d_in) @ (.., d_in) -> (.., d_out)


def loss_of_weights(loss, W, x, target):
    """``L(W x; target)`` per batch element ``[...]``: the loss as a function of the weights."""
    return get_loss(loss).value(layer_output(W, x), target)


def local_surprise(loss, W, x, target):
    r"""The local surprise signal :math:`u = \partial L/\partial y` at :math:`y = W x` (NL-4): ``[..., d_out]``."""
    return get_loss(loss).grad(layer_output(W, x), target)


def weight_gradient(loss, W, x, target):
    r"""NL-4's factorised gradient :math:`\nabla_W L(W; x) = u\, x^T`: ``[..., d_out, d_in]``.

    Notes
    -----
    Chain rule for :math:`y = W x`: :math:`\partial L/\partial W_{ij} = \sum_a u_a\, \partial y_a/\partial W_{ij} = u_i x_j`.
    """
    return outer(local_surprise(loss, W, x, target), x)  # (.., d_out) x (.., d_in) -> (.., d_out, d_in)


def finite_difference_weight_gradient(loss, W, x, target, h: float = 1e-5):
    r"""Central differences of :math:`L(W x)` in every entry of ``W``: an independent route to :math:`\nabla_W L`.

    It never calls the hand-written ``dL/dy``; only loss values.

    Parameters
    ----------
    loss : Loss or str
    W : array ``[..., d_out, d_in]``
    x : array ``[..., d_in]``
    target : array ``[..., d_out]``
    h : float

    Returns
    -------
    G_fd : array ``[..., d_out, d_in]``
    bound : array ``[...]``
        Bound on ``max_ij |G_fd_ij - dL/dW_ij|``.

    Notes
    -----
    Perturbing :math:`W_{ij}` by :math:`s` moves ``y`` by :math:`s x_j e_i`, so the
    third derivative along that direction is :math:`x_j^3 T_3` with :math:`T_3`
    the loss's coordinate bound. One evaluation of :math:`L(W x)` rounds by at
    most the loss's :math:`\delta(y)` plus :math:`\|u\|_1 (d_{in} + 2)\epsilon \max_i\sum_j|W_{ij} x_j|`
    (the error of ``W x``), the latter doubled for the perturbed ``W``. Hence

    .. math::

        |G^{fd}_{ij} - \partial_{ij} L| \le \frac{h^2}{6}\max_j|x_j|^3\,T_3 + \frac{\delta_W}{h} .
    """
    from ..finite_differences import central_difference_bound, central_gradient

    loss = get_loss(loss)
    xp = _check_layer(W, x)
    y = matvec(W, x)  # (.., d_out)
    loss._check(y, target)
    x_e = xp.expand_dims(x, axis=x.ndim - 1)  # (.., 1, d_in): broadcasts over the perturbed copies
    t_e = xp.expand_dims(target, axis=target.ndim - 1)  # (.., 1, d_out)

    def L_of_W(Wp):  # (.., n, d_out, d_in) -> (.., n)
        return loss._value(matvec(Wp, x_e), t_e, xp)

    G_fd = central_gradient(L_of_W, W, h, ndim=2)
    eps = float(xp.finfo(W.dtype).eps)
    d_in = W.shape[-1]
    x3 = xp.max(xp.abs(x), axis=-1) ** 3  # (..,)
    Wx_abs = xp.max(matvec(xp.abs(W), xp.abs(x)) + h * xp.sum(xp.abs(x), axis=-1, keepdims=True), axis=-1)  # (..,)
    u_l1 = xp.sum(xp.abs(loss._grad(y, target, xp)), axis=-1)  # (..,)
    y_far = xp.abs(y) + h * xp.max(xp.abs(x), axis=-1, keepdims=True) + eps * Wx_abs[..., None]  # (.., d_out)
    delta = loss.value_rounding_bound(y_far, target) + 2 * u_l1 * (d_in + 2) * eps * Wx_abs
    bound = central_difference_bound(h, x3 * loss._third(target, xp), 0.0) + delta / h
    return G_fd, bound


def surprise_value(u):
    """The value ``v = -u`` that turns refmem's Hebbian ``-<W k, v>`` into NL-5's ``+<W x, u>``."""
    return -u


def local_surprise_level(eta=1.0) -> Level:
    r"""The NL-5 level: dot objective, local l2 retention with step ``eta``.

    Parameters
    ----------
    eta : float or array ``[...]``
        Learning rate :math:`\eta_{t+1} > 0`.

    Notes
    -----
    With key ``x`` and value ``-u`` (:func:`surprise_value`):

    .. math::

        \operatorname*{argmin}_W -\langle W x, -u\rangle + \frac{1}{2\eta}\|W - W_t\|^2
        = W_t - \eta\, u x^T .

    The objective is linear, so the implicit (proximal) step and the explicit
    (linearised) step coincide; the level is stated as the implicit one,
    literally NL-5.
    """
    return Level(Dot(), LocalL2(eta=eta), step="implicit", name="mlp_local_surprise")


def surprise_step(loss, W_t, x, target, eta=1.0, *, method="closed", solver=None):
    r"""One training step as the NL-5 level: :math:`u` at :math:`W_t`, then solve the level.

    Parameters
    ----------
    loss : Loss or str
        ``"squared_error"``, ``"softmax_cross_entropy"`` or a :class:`~refmem.losses.Loss`.
    W_t : array ``[..., d_out, d_in]``
    x : array ``[..., d_in]``
        The sample :math:`x_{t+1}` (the key).
    target : array ``[..., d_out]``
    eta : float or array ``[...]``
    method : {"closed", "iterative"}
    solver : str, optional
        Passed to :func:`refmem.level.solve`.

    Returns
    -------
    W : array ``[..., d_out, d_in]``
    report : SolveReport
    """
    _check_step(W_t, x, eta)
    u = local_surprise(loss, W_t, x, target)  # (.., d_out)
    return solve(local_surprise_level(eta), W_t, x, surprise_value(u), method=method, solver=solver)


def train(loss, W_0, X, targets, eta=1.0, *, method="closed", solver=None):
    r"""Train ``y = W x`` over a dataset as a sequence of NL-5 level solves (NL-2..5).

    Parameters
    ----------
    loss : Loss or str
    W_0 : array ``[..., d_out, d_in]``
        Initial weights.
    X : array ``[..., N, d_in]``
        Samples :math:`x_1, \dots, x_N` in the order they are seen.
    targets : array ``[..., N, d_out]``
    eta : float or array ``[N]`` / ``[..., N]``
        Learning rate, constant or one per step (:math:`\eta_{t+1}`).
    method, solver
        As in :func:`refmem.level.solve`.

    Returns
    -------
    Ws : array ``[..., N + 1, d_out, d_in]``
        :math:`W_0, W_1, \dots, W_N`.
    reports : list of SolveReport
        One per step.
    """
    require(W_0=W_0, X=X, targets=targets)
    xp = check_arrays(W_0=W_0, X=X, targets=targets)
    check_ndim(X, "X", 2, "[..., N, d_in]")
    check_ndim(targets, "targets", 2, "[..., N, d_out]")
    N = X.shape[-2]
    if targets.shape[-2] != N:
        raise ValueError(f"targets has {targets.shape[-2]} samples but X has N = {N} (axis -2)")
    per_step = hasattr(eta, "shape") and eta.ndim > 0
    if per_step and eta.shape[-1] != N:
        raise ValueError(f"eta must be a scalar or end in N = {N} (one learning rate per step); got shape {tuple(eta.shape)}")
    if per_step:
        check_batch_shape(eta, "eta", tuple(W_0.shape[:-2]) + (N,), "W_0's batch dims and N")
    Ws, reports, W = [W_0], [], W_0
    for t in range(N):
        eta_t = eta[..., t] if per_step else eta
        W, rep = surprise_step(loss, W, X[..., t, :], targets[..., t, :], eta_t, method=method, solver=solver)
        Ws.append(W)
        reports.append(rep)
    return xp.stack(Ws, axis=-3), reports


def nl6_printed_step(loss, W_t, x_prev, x, target, eta=1.0, *, method="closed", solver=None):
    r"""NL-6 *as printed*: the surprise of :math:`x_{t+1}` paired with the key :math:`x_t` (erratum).

    .. math::

        \operatorname*{argmin}_W \langle W x_t, \nabla_{y_{t+1}} L(W_t; x_{t+1})\rangle
        + \frac{1}{2\eta}\|W - W_t\|^2 = W_t - \eta\, u_{t+1} x_t^T .

    It equals the GD step :math:`W_t - \eta u_{t+1} x_{t+1}^T` only when
    :math:`x_t = x_{t+1}`; the difference is :math:`\eta\, u_{t+1} (x_{t+1} - x_t)^T`.

    Parameters
    ----------
    x_prev : array ``[..., d_in]``
        :math:`x_t`, the previous sample (the printed key).
    x : array ``[..., d_in]``
        :math:`x_{t+1}`, the sample whose surprise is taken.
    """
    _check_step(W_t, x, eta)
    _check_layer(W_t, x_prev, W_name="W_t", x_name="x_prev")
    u = local_surprise(loss, W_t, x, target)  # (.., d_out), at x_{t+1}
    return solve(local_surprise_level(eta), W_t, x_prev, surprise_value(u), method=method, solver=solver)


__all__ = [
    "layer_output",
    "loss_of_weights",
    "local_surprise",
    "weight_gradient",
    "finite_difference_weight_gradient",
    "surprise_value",
    "local_surprise_level",
    "surprise_step",
    "train",
    "nl6_printed_step",
]
