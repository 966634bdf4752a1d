r"""A deep (residual MLP) memory, with hand-written forward and backward (MATH.md 5; Titans / Miras).

.. math::

    \mathcal M(x) = x + W_1\, \sigma(W_2 x), \qquad
    W_1 \in \mathbb R^{d \times h},\; W_2 \in \mathbb R^{h \times d}, \qquad (d_k = d_v = d)

The memory's parameters ``W = (W_1, W_2)`` replace the matrix ``M``; one level
of the scan is, as for a linear memory,

.. math::

    W_t = \operatorname*{argmin}_W\; l(W; k_t, v_t) + \mathrm{Ret}(W, W_{t-1}),
    \qquad l(W; k, v) = \ell(\mathcal M(k) - v),

with an attentional bias :math:`\ell` on the residual ``r = M(k) - v``
(:class:`ResidualLoss`: ``l2`` :math:`\tfrac12\|r\|^2`, ``lp`` :math:`\|r\|_p^p`,
``huber`` per coordinate) and a retention applied to each weight matrix,
:math:`\mathrm{Ret}(W, W') = \mathrm{Ret}(W_1, W_1') + \mathrm{Ret}(W_2, W_2')`
(any :class:`~refmem.retentions.Retention`; the forget gate by default).

Gradients (chain rule, written out in :func:`mlp_forward`'s backward closure):
with :math:`z = W_2 x`, :math:`a = \sigma(z)`, :math:`u = \partial\ell/\partial r`,

.. math::

    \nabla_{W_1} l = u\, a^T, \qquad
    \nabla_{W_2} l = \big((W_1^T u) \odot \sigma'(z)\big)\, x^T, \qquad
    \nabla_x = u + W_2^T \big((W_1^T u) \odot \sigma'(z)\big).

They are checked against central finite differences with a derived tolerance
(``tests/test_memories_b.py``, ``refmem verify`` spec ``deep_memory``).

Steps (:func:`deep_step`):

- explicit: the loss linearised at ``W_{t-1}``; its closed form is the
  retention's explicit step on each matrix (one gradient step
  :math:`\alpha W - \eta \nabla l` under the forget gate); the iterative
  solver minimises :math:`\langle g, W\rangle + \mathrm{Ret}(W, W_{t-1})` numerically;
- implicit: the true (non-convex) ``l``; no closed form exists, so only the
  iterative solver (gradient descent with step ``1/L`` from a curvature
  estimate, or proximal gradient for a non-smooth retention) computes it. For ``eta`` small enough
  that :math:`1/\eta` exceeds the negative curvature of ``l`` the problem is
  strongly convex and the minimiser unique; the NumPy-only cross-check in
  :mod:`refmem.checks.deep_memory_scipy` compares it with SciPy (BFGS, then a root of the optimality condition).

State convention: the state is the pair ``(W_1, W_2)`` (``[..., d, h]``,
``[..., h, d]``), not a matrix ``[..., d_v, d_k]``. Without ``initial_state``
the scan starts from ``W_1 = 0``, ``W_2 = I_{h x d}`` (``M`` is the identity
map and its gradient in ``W_1`` is non-zero; ``W_1 = W_2 = 0`` is a saddle
where every gradient vanishes). Read-out ``o_t = M_t(q_t)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np  # randomness only (make_inputs, make_initial_state)

from ..level import ClosedFormUnavailable
from ..linalg import clip, matvec, outer, sign
from ..retentions import ForgetGate, Retention
from ..solvers import SOLVERS, Problem, default_rtol
from ..validation import check_arrays, finite_outputs, positive
from ._inputs import check_gate_range, check_sequence, random_qkv

# --------------------------------------------------------------------------- activations


def _tanh(z, xp):
    return xp.tanh(z)


def _dtanh(z, xp):
    t = xp.tanh(z)
    return 1 - t * t


def _silu(z, xp):
    return z / (1 + xp.exp(-z))


def _dsilu(z, xp):
    s = 1 / (1 + xp.exp(-z))
    return s + z * s * (1 - s)


# name -> (sigma, sigma', sup|sigma'|, sup|sigma''|): the bounds size the finite-difference
# tolerance and the solvers' Lipschitz estimates (tanh'' peaks at 4/(3 sqrt 3); silu' <= 1.1, silu'' <= 1/2).
ACTIVATIONS = {
    "tanh": (_tanh, _dtanh, 1.0, 4 / (3 * math.sqrt(3))),
    "silu": (_silu, _dsilu, 1.1, 0.5),
}


def _activation(name):
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
    sigma, dsigma, _, _ = _activation(activation)
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


# --------------------------------------------------------------------------- one level step


def check_params(params, d, xp, dtype, name="initial_state"):
    """Validate ``(W1 [..., d, h], W2 [..., h, d])``; return ``(W1, W2)``."""
    if not isinstance(params, tuple) or len(params) != 2:
        raise TypeError(f"{name} for the deep memory must be a pair (W1 [..., d, h], W2 [..., h, d])")
    W1, W2 = params
    check_arrays(**{f"{name}[0] (W1)": W1, f"{name}[1] (W2)": W2})
    if W1.dtype != dtype:
        raise TypeError(f"{name} has dtype {W1.dtype} but the inputs have {dtype}")
    if W1.ndim < 2 or W2.ndim < 2 or W1.shape[-2] != d or W2.shape[-1] != d or W1.shape[-1] != W2.shape[-2]:
        raise ValueError(f"{name} must be (W1 [..., {d}, h], W2 [..., h, {d}]) with one hidden size h; "
                         f"got {tuple(W1.shape)}, {tuple(W2.shape)}")
    return W1, W2


def _pack(W1, W2, xp):
    """The solvers' variable, one matrix: ``[W1; W2]`` ``[..., 2d, d]`` when ``h = d``, else ``[W1 | W2^T]`` ``[..., d, 2h]``.

    With ``h = d`` every row of the packed matrix is a row of ``W1`` or of ``W2``,
    so row-wise constraints (the KL retention's simplex rows, kept by mirror
    descent) hold for the packed variable exactly when they hold for both matrices.
    """
    if W1.shape[-1] == W1.shape[-2]:
        return xp.concat([W1, W2], axis=-2)
    return xp.concat([W1, xp.matrix_transpose(W2)], axis=-1)


def _unpack(X, h, d, xp):
    if h == d:
        return X[..., :d, :], X[..., d:, :]
    return X[..., :h], xp.matrix_transpose(X[..., h:])


def _lipschitz_estimate(W1, W2, k, v, loss, activation, xp):
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
    sigma, _, s1, s2 = _activation(activation)
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


def _measured_curvature(W1, W2, k, v, loss, activation, xp, iters=12):
    r"""Largest ``|eigenvalue|`` of the Hessian of ``l`` at ``W`` per batch element ``[...]``, by power iteration.

    Hessian-vector products are central differences of the hand-written
    gradient, :math:`H u \approx (\nabla l(W + \epsilon u) - \nabla l(W - \epsilon u)) / (2\epsilon)`,
    ``epsilon = eps^(1/3)``, from the start vector ``grad l + 1``. The
    estimate can only be low (by the part of the start vector on the top
    eigenvector); :func:`deep_step` doubles it and caps it by the bound of
    :func:`_lipschitz_estimate`.
    """
    h, d = W1.shape[-1], W1.shape[-2]
    X = _pack(W1, W2, xp)

    def grad(Y):
        A, B = _unpack(Y, h, d, xp)
        _, g1, g2 = deep_loss_grad(A, B, k, v, loss, xp, activation)
        return _pack(g1, g2, xp)

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


def deep_step(params, k, v, *, retention=None, loss=None, step="explicit", method="closed",
              activation="tanh", solver=None, rtol=None, max_iter=None):
    r"""One level update of the deep memory: ``argmin_W l(W; k, v) + Ret(W, W_t)`` (or its linearisation).

    Parameters
    ----------
    params : tuple ``(W1 [..., d, h], W2 [..., h, d])``
        ``W_t``.
    k, v : array ``[..., d]``
    retention : Retention, optional
        Applied to each matrix; default ``ForgetGate(eta=0.1, alpha=1)``.
    loss : ResidualLoss or str, optional
        Default ``l2``.
    step : {"explicit", "implicit"}
    method : {"closed", "iterative"}
        ``"closed"`` exists for the explicit step only (the retention's
        explicit step on each matrix); the implicit step raises
        :class:`~refmem.level.ClosedFormUnavailable`.
    solver : str, optional
        Iterative solver; default ``cg`` for the explicit step under a
        quadratic retention, ``prox_grad`` for a non-smooth retention,
        the retention's ``preferred_solver`` if it names one, else ``gd``
        (step ``1/L``: ``L`` is ``1/eta`` plus twice the measured curvature of
        ``l`` at ``W_t`` (:func:`_measured_curvature`), capped by the bound of
        :func:`_lipschitz_estimate`).

    Returns
    -------
    (W1, W2), SolveReport

    Notes
    -----
    Explicit: :math:`\min_W \langle g, W\rangle + \mathrm{Ret}(W, W_t)`,
    :math:`g = \nabla l(W_t)`. Implicit: :math:`\min_W l(W) + \mathrm{Ret}(W, W_t)`.
    """
    from ..solvers import SolveReport

    loss = residual_loss(loss)
    if step not in ("explicit", "implicit"):
        raise ValueError(f"step must be 'explicit' or 'implicit'; got {step!r}")
    if method not in ("closed", "iterative"):
        raise ValueError(f"method must be 'closed' or 'iterative'; got {method!r}")
    xp = check_arrays(k=k, v=v)
    if k.shape[-1] != v.shape[-1]:
        raise ValueError(f"the deep memory maps d to d: k and v must have the same length; got {k.shape[-1]}, {v.shape[-1]}")
    W1t, W2t = check_params(params, k.shape[-1], xp, k.dtype, name="params")
    retention = ForgetGate(eta=0.1, alpha=1.0) if retention is None else retention
    if not isinstance(retention, Retention):
        raise TypeError(f"retention must be a Retention instance; got {type(retention).__name__}")
    ret = retention.bind(xp, k.dtype)
    h, d = W1t.shape[-1], W1t.shape[-2]
    for W in (W1t, W2t):  # e.g. the KL retention needs every row on its simplex
        ret.check_state(W, xp)
    _, g1, g2 = deep_loss_grad(W1t, W2t, k, v, loss, xp, activation)
    if method == "closed":
        if step == "implicit":
            raise ClosedFormUnavailable("the implicit step of the deep memory has no closed form; use method='iterative'")
        W = (ret.explicit_step(W1t, g1, xp), ret.explicit_step(W2t, g2, xp))
        return W, SolveReport("closed", f"deep/{loss.name}/{ret.name}/explicit")
    if step == "implicit" and not loss.smooth:
        raise ValueError(f"the implicit deep step needs a smooth loss (l2, huber, lp with p >= 2); got lp with p = {loss.p}")
    Xt = _pack(W1t, W2t, xp)
    g = _pack(g1, g2, xp)

    def ret_value(X):
        A, B = _unpack(X, h, d, xp)
        return ret.value(A, W1t, xp) + ret.value(B, W2t, xp)

    def ret_grad(X):
        A, B = _unpack(X, h, d, xp)
        return _pack(ret.grad(A, W1t, xp), ret.grad(B, W2t, xp), xp)

    if step == "explicit":
        def f(X):
            return xp.sum(g * X, axis=(-2, -1)) + ret_value(X)

        def df(X):
            return g + ret_grad(X)

        L = ret.lipschitz(xp)
        quadratic = getattr(ret, "quadratic", True) and ret.prox is None
    else:
        def f(X):
            A, B = _unpack(X, h, d, xp)
            return deep_loss(A, B, k, v, loss, xp, activation) + ret_value(X)

        def df(X):
            A, B = _unpack(X, h, d, xp)
            _, a1, a2 = deep_loss_grad(A, B, k, v, loss, xp, activation)
            return _pack(a1, a2, xp) + ret_grad(X)

        L_l = xp.minimum(2 * _measured_curvature(W1t, W2t, k, v, loss, activation, xp),
                         xp.asarray(_lipschitz_estimate(W1t, W2t, k, v, loss, activation, xp), dtype=k.dtype))
        L = ret.lipschitz(xp) + L_l
        quadratic = False
    prox = h_value = None
    if ret.prox is not None:
        def prox(X, t):
            A, B = _unpack(X, h, d, xp)
            return _pack(ret.prox(A, t), ret.prox(B, t), xp)

        def h_value(X):
            A, B = _unpack(X, h, d, xp)
            return ret.h_value(A) + ret.h_value(B)

    L = xp.asarray(L, dtype=k.dtype) + 0 * xp.sum(Xt, axis=(-2, -1))  # (..,)
    mu = xp.asarray(ret.mu(xp), dtype=k.dtype) + 0 * xp.sum(Xt, axis=(-2, -1))  # (..,); not 0 * L: L may be inf
    x0 = Xt + 0 * g
    prob = Problem(xp, x0, f, df, L, mu, prox, h_value, quadratic)
    name = solver or _default_solver(prob, ret, step)
    if name == "mirror_descent" and h != d:
        raise ValueError(f"the row-wise (simplex) retention {ret.name!r} needs the hidden size h equal to d = {d} "
                         f"for the iterative deep step (rows of W1 and W2 are packed as rows); got h = {h}")
    kwargs = {}
    if name == "gd-backtracking":
        name, kwargs["backtracking"] = "gd", True
    if name not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS) + ['gd-backtracking']}; got {solver!r}")
    if max_iter is not None:
        kwargs["max_iter"] = max_iter
    if rtol is None:
        rtol = default_rtol(k.dtype, xp)
    X, report = SOLVERS[name](prob, rtol=rtol, **kwargs)
    return _unpack(X, h, d, xp), report


def _default_solver(prob, ret, step):
    preferred = getattr(ret, "preferred_solver", None)
    if preferred:
        return preferred
    if prob.prox is not None:
        return "prox_grad"
    if step == "explicit" and prob.quadratic:
        return "cg"
    return "gd"


# --------------------------------------------------------------------------- the scan


def default_params(batch, d, h, xp, dtype):
    """``W1 = 0 [..., d, h]``, ``W2 = I_{h x d} [..., h, d]`` (``M`` starts as the identity map)."""
    W1 = xp.zeros(tuple(batch) + (d, h), dtype=dtype)
    W2 = xp.zeros(tuple(batch) + (h, d), dtype=dtype) + xp.eye(h, d, dtype=dtype)
    return W1, W2


@finite_outputs
def deep_memory_recurrent(q, k, v, eta, alpha=None, *, initial_state=None, hidden=None, loss=None,
                          step="explicit", method="closed", activation="tanh", rtol=None):
    r"""Scan of the deep memory: a forget-gate level per token, read-out ``o_t = M_t(q_t)``.

    Parameters
    ----------
    q, k, v : array ``[..., T, d]`` (``d_k = d_v = d``)
    eta : array ``[..., T]``
        Step sizes ``> 0``.
    alpha : array ``[..., T]``, optional
        Forget gates in ``[0, 1]`` (default 1: local l2 retention).
    initial_state : tuple ``(W1 [..., d, h], W2 [..., h, d])``, optional
        Default ``W1 = 0``, ``W2 = I`` with ``h = hidden`` (default ``d``).
    loss : ResidualLoss or str, optional
        Attentional bias on the residual (default ``l2``).
    step, method : see :func:`deep_step`
        ``"explicit"``/``"closed"`` is the gradient-descent memory
        :math:`W_t = \alpha_t W_{t-1} - \eta_t \nabla l(W_{t-1}; k_t, v_t)`.

    Returns
    -------
    o : array ``[..., T, d]``
    state : tuple ``(W1, W2)``
    """
    xp = check_sequence(q, k, v, eta=eta, alpha=alpha)
    lead = tuple(k.shape[:-1])
    for name, g in (("eta", eta), ("alpha", alpha)):
        if g is not None and tuple(g.shape) != lead:
            raise ValueError(f"{name} must have shape {lead} (one per step); got {tuple(g.shape)}")
    positive(eta, "eta", xp, k.dtype)
    check_gate_range(alpha, "alpha", xp)

    def retention_at(t):
        return ForgetGate(eta=eta[..., t], alpha=1.0 if alpha is None else alpha[..., t])

    return deep_scan(q, k, v, retention_at, initial_state=initial_state, hidden=hidden, loss=loss, step=step,
                     method=method, activation=activation, rtol=rtol)


def deep_scan(q, k, v, retention_at, *, initial_state=None, hidden=None, loss=None, step="explicit",
              method="closed", activation="tanh", rtol=None, initial_default=None):
    """Scan of the deep memory under any retention: ``retention_at(t) -> Retention`` for token ``t``.

    The shared scan of :func:`deep_memory_recurrent` and the deep variants of
    the Miras memories (Yaad, Memora, ...). ``initial_default(batch, d, h, xp, dtype)``
    overrides :func:`default_params` (e.g. a state on the simplex).
    Returns ``(o [..., T, d], (W1, W2))``.
    """
    xp = check_sequence(q, k, v)
    d = k.shape[-1]
    if v.shape[-1] != d:
        raise ValueError(f"the deep memory maps d to d: v must have last dimension d_k = {d}; got {tuple(v.shape)}")
    if initial_state is None:
        h = d if hidden is None else int(hidden)
        if h < 1:
            raise ValueError(f"hidden must be >= 1; got {hidden}")
        W = (initial_default or default_params)(k.shape[:-2], d, h, xp, k.dtype)
    else:
        W = check_params(initial_state, d, xp, k.dtype)
    outs = []
    for t in range(k.shape[-2]):
        W, _ = deep_step(W, k[..., t, :], v[..., t, :], retention=retention_at(t), loss=loss, step=step,
                         method=method, activation=activation, rtol=rtol)
        y, _ = mlp_forward(W[0], W[1], q[..., t, :], xp, activation)
        outs.append(y)  # (.., d)
    o = xp.stack(outs, axis=-2) if outs else xp.zeros(tuple(v.shape), dtype=v.dtype)
    return o, W


def _make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64"):
    # the deep memory maps d to d: d_v is taken equal to d_k
    g, inputs, conv = random_qkv(seed, batch, T, d_k, d_k, xp, dtype)
    inputs["eta"] = conv(g.uniform(0.05, 0.5, size=tuple(batch) + (T,)))
    inputs["alpha"] = conv(g.uniform(0.8, 1.0, size=tuple(batch) + (T,)))
    return inputs


def make_initial_state(seed, batch, d, xp, dtype="float64", *, h=None):
    """Random ``(W1, W2)`` of scale ``1/sqrt(fan_in)``."""
    h = d if h is None else h
    g = np.random.default_rng(seed)
    W1 = g.standard_normal(tuple(batch) + (d, h)) / np.sqrt(h)
    W2 = g.standard_normal(tuple(batch) + (h, d)) / np.sqrt(d)
    return xp.asarray(np.asarray(W1, dtype=dtype)), xp.asarray(np.asarray(W2, dtype=dtype))


def make_deep_initial_state(seed, batch, d_k, d_v, xp, dtype="float64"):
    """:func:`make_initial_state` in the registry's signature (``d_v`` must equal ``d_k``)."""
    if d_v != d_k:
        raise ValueError(f"the deep memory maps d to d: d_v must equal d_k = {d_k}; got {d_v}")
    return make_initial_state(seed, batch, d_k, xp, dtype)
