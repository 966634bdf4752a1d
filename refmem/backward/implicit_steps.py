r"""Backward passes of implicit steps solved iteratively: the implicit function theorem.

An implicit step (NL (P), MATH.md 1) returns the minimiser of the stated level

.. math::

    M^\star = \operatorname*{argmin}_M F(M; \theta), \qquad
    F = l(M; k, v) + \mathrm{Ret}(M, M_{t-1}; \text{gates}), \qquad \theta = (M_{t-1}, k, v, \text{gates}),

which no closed form gives (Moneta's lq retention, Memora's KL retention with the true l2
bias, the deep memory's non-convex loss): the forward solves it iteratively. It solves
the stationarity condition :math:`G(M^\star, \theta) = \nabla_M F(M^\star; \theta) = 0`
(on the scaled simplex of the KL retention: :math:`P G = 0` with :math:`P` the projection
on matrices with zero row sums, the rows' multipliers removed). Where the Hessian
:math:`H = \nabla^2_{MM} F(M^\star)` is positive definite (on the simplex: on its tangent
space, the range of :math:`P`), the implicit function theorem makes :math:`M^\star` a
differentiable function of :math:`\theta` with :math:`\partial M^\star/\partial\theta = -H^{-1}\,\partial G/\partial\theta`.
A cotangent :math:`S` of :math:`M^\star` is pulled back by one symmetric linear solve, the
adjoint system,

.. math::

    H\lambda = S \quad (P H P\,\lambda = P S,\ \lambda = P\lambda \text{ on the simplex}), \qquad
    d\theta = -\Big(\frac{\partial G}{\partial\theta}\Big)^T \lambda .

Only second derivatives of ``F`` enter, none of the solver's iterations: the gradient is
the derivative of the exact minimiser, evaluated at the computed one.

Second derivatives of the biases on a linear memory
----------------------------------------------------
With :math:`r = M k - v`, :math:`u = \ell'(r)` and :math:`u' = \ell''(r)` (diagonal: every
bias here is per coordinate, :class:`~refmem.memories.residual_mlp.ResidualLoss`),
:math:`\nabla_M l = u\,k^T` and

.. math::

    \nabla^2 l\,\Lambda = \big(u' \odot \Lambda k\big)\,k^T, \qquad
    dk = -\big(\lambda^T u + M^T (u' \odot \lambda k)\big), \qquad dv = u' \odot \lambda k .

On the deep memory the same products are the MLP's hand-written second derivatives
(:func:`~refmem.memories.residual_mlp.deep_loss_grad_vjp`).

Second derivatives of the retentions
------------------------------------
Forget gate, :math:`\nabla\mathrm{Ret} = (M - \alpha M_{t-1})/\eta`:

.. math::

    \nabla^2\mathrm{Ret}\,\Lambda = \Lambda/\eta, \quad dM_{t-1} = \alpha\lambda/\eta, \quad
    d\alpha = \langle\lambda, M_{t-1}\rangle/\eta, \quad d\eta = \langle\lambda, M - \alpha M_{t-1}\rangle/\eta^2 .

lq (Moneta), :math:`\nabla\mathrm{Ret} = (\nabla\psi_q(M) - \alpha\nabla\psi_q(M_{t-1}))/\eta`
(Hessian of :math:`\psi_q`: :func:`~refmem.backward.retention_steps.lq_mirror_jacobian_product`):

.. math::

    \nabla^2\mathrm{Ret}\,\Lambda = \nabla^2\psi_q(M)\Lambda/\eta, \quad
    dM_{t-1} = \alpha\nabla^2\psi_q(M_{t-1})\lambda/\eta, \quad
    d\alpha = \langle\lambda, \nabla\psi_q(M_{t-1})\rangle/\eta, \quad
    d\eta = \langle\lambda, \nabla\psi_q(M) - \alpha\nabla\psi_q(M_{t-1})\rangle/\eta^2 .

KL on the scaled simplex (Memora),
:math:`\nabla\mathrm{Ret} = (\log M - \log M_{t-1} + 1)/\eta + (\log M - \log\tfrac{c}{d_k} + 1)/a`:

.. math::

    \nabla^2\mathrm{Ret}\,\Lambda = (1/\eta + 1/a)\,\Lambda / M, \quad
    dM_{t-1} = \lambda / (\eta M_{t-1}), \quad
    d\eta = \langle\lambda, \log M - \log M_{t-1} + 1\rangle/\eta^2
    \quad (a, c \text{ are numbers, not differentiated}).

On the simplex the solution's row sums are those of :math:`M_{t-1}` (the forward's
mirror descent keeps its start's row sums; on the simplex they are ``c``): with the row
sums' multipliers :math:`\nu` of the adjoint system, :math:`H\lambda + \nu 1^T = S`, the
gradient of :math:`M_{t-1}` in the ambient space of positive matrices (what finite
differences through the forward measure) gains :math:`\nu 1^T`; restricted to the simplex
(zero row sums) that term vanishes.

The adjoint solve
-----------------
:func:`adjoint_solve` builds :math:`H` (``n = d_v d_k`` Hessian-vector products, one
batched call) and solves it directly: the states these steps are solved for are small
(the forward's Newton solver builds the same ``n x n`` matrix). Its eigenvalues certify the
solve: a smallest eigenvalue that is not positive means :math:`M^\star` is not a strict
local minimiser and has no derivative; otherwise :math:`\kappa = \lambda_{\max}/\lambda_{\min}`
bounds the relative error of the backward-stable solve by about :math:`n\varepsilon\kappa`,
and as for the forward solvers (:func:`~refmem.solvers.dispatch.certified_rtol`) a system
whose rounding floor ``32 eps kappa`` passes :math:`\sqrt\varepsilon` is refused with a
:class:`~refmem.solvers.ConvergenceError`, never answered with a gradient without correct digits.
"""

from __future__ import annotations

import math

from ..linalg import fro_norm, inner, matvec, outer
from ..retentions import ForgetGate
from ..retentions.kl_simplex import KLSimplex
from ..retentions.lq_moneta import LqMoneta, lq_mirror
from ..solvers import ConvergenceError, SolveReport
from ..solvers.problem import max_float, rtol_ceiling
from ..validation import expand_matrix
from .retention_steps import lq_mirror_jacobian_product

# --------------------------------------------------------------------------- biases on a linear memory


def bias_hvp(M, k, v, loss, Lam, xp):
    r""":math:`\nabla^2_{MM} l\,\Lambda = (u'(r) \odot \Lambda k)\,k^T` with :math:`r = M k - v` (``Lam`` may carry leading axes)."""
    r = matvec(M, k) - v  # (.., d_v)
    return outer(loss.grad_derivative(r, xp) * matvec(Lam, k), k)  # (.., d_v, d_k)


def bias_vjp(M, k, v, loss, lam, xp):
    r"""``(dk, dv) = -(\partial \nabla_M l / \partial (k, v))^T \lambda`` (module docstring)."""
    r = matvec(M, k) - v  # (.., d_v)
    w = loss.grad_derivative(r, xp) * matvec(lam, k)  # u' o (lam k): (.., d_v)
    dk = -(matvec(xp.matrix_transpose(lam), loss.grad(r, xp)) + matvec(xp.matrix_transpose(M), w))  # (.., d_k)
    return dk, w


# --------------------------------------------------------------------------- retentions


def forget_gate_hvp(ret, M, Lam, xp):
    r""":math:`\Lambda/\eta`."""
    return Lam / expand_matrix(ret.eta, xp)


def forget_gate_vjp(ret, M, M_prev, lam, xp):
    r""":math:`dM_{t-1} = \alpha\lambda/\eta`, :math:`d\alpha = \langle\lambda, M_{t-1}\rangle/\eta`, :math:`d\eta = \langle\lambda, M - \alpha M_{t-1}\rangle/\eta^2`."""
    e, a = expand_matrix(ret.eta, xp), expand_matrix(ret.alpha, xp)  # (.., 1, 1)
    return a * lam / e, {"alpha": inner(lam, M_prev, xp) / ret.eta,
                         "eta": inner(lam, M - a * M_prev, xp) / (ret.eta * ret.eta)}


def lq_hvp(ret, M, Lam, xp):
    r""":math:`\nabla^2\psi_q(M)\Lambda/\eta`."""
    return lq_mirror_jacobian_product(M, Lam, ret.q, xp) / expand_matrix(ret.eta, xp)


def lq_vjp(ret, M, M_prev, lam, xp):
    r"""The lq retention's mixed second derivatives (module docstring)."""
    e, a = expand_matrix(ret.eta, xp), expand_matrix(ret.alpha, xp)  # (.., 1, 1)
    P_prev = lq_mirror(M_prev, ret.q, xp)  # grad psi_q(M_{t-1}): (.., m, n)
    dM_prev = a * lq_mirror_jacobian_product(M_prev, lam, ret.q, xp) / e
    return dM_prev, {"alpha": inner(lam, P_prev, xp) / ret.eta,
                     "eta": inner(lam, lq_mirror(M, ret.q, xp) - a * P_prev, xp) / (ret.eta * ret.eta)}


def kl_hvp(ret, M, Lam, xp):
    r""":math:`(1/\eta + 1/a)\,\Lambda/M`."""
    return (1 / expand_matrix(ret.eta, xp) + 1 / expand_matrix(ret.a, xp)) * Lam / M


def kl_vjp(ret, M, M_prev, lam, xp):
    r""":math:`dM_{t-1} = \lambda/(\eta M_{t-1})`, :math:`d\eta = \langle\lambda, \log M - \log M_{t-1} + 1\rangle/\eta^2`."""
    e = expand_matrix(ret.eta, xp)  # (.., 1, 1)
    return lam / (e * M_prev), {"eta": inner(lam, xp.log(M) - xp.log(M_prev) + 1, xp) / (ret.eta * ret.eta)}


#: retention class -> (Hessian-vector product, mixed second derivatives' adjoint) of its implicit step
RETENTION_SECOND_DERIVATIVES = {
    ForgetGate: (forget_gate_hvp, forget_gate_vjp),
    LqMoneta: (lq_hvp, lq_vjp),
    KLSimplex: (kl_hvp, kl_vjp),
}


def second_derivatives(ret):
    """``(hvp, vjp)`` of a retention's implicit step (:data:`RETENTION_SECOND_DERIVATIVES`)."""
    if type(ret) not in RETENTION_SECOND_DERIVATIVES:
        raise ValueError(f"the implicit step under the retention {ret.name!r} has no backward pass; retentions with "
                         f"one: {sorted(cls.name for cls in RETENTION_SECOND_DERIVATIVES)}")
    return RETENTION_SECOND_DERIVATIVES[type(ret)]


def retention_hvp(ret, M, Lam, xp):
    r""":math:`\nabla^2_{MM}\mathrm{Ret}(M, \cdot)\,\Lambda` of a bound retention (module docstring)."""
    return second_derivatives(ret)[0](ret, M, Lam, xp)


def retention_vjp(ret, M, M_prev, lam, xp):
    r"""``(dM_prev, {gate: d gate})``: :math:`-(\partial\nabla\mathrm{Ret}/\partial(M_{t-1}, \text{gates}))^T\lambda`."""
    return second_derivatives(ret)[1](ret, M, M_prev, lam, xp)


def on_simplex(ret):
    """Whether the retention keeps every row on a scaled simplex (the adjoint lives on zero row sums)."""
    return isinstance(ret, KLSimplex)


# --------------------------------------------------------------------------- the adjoint system


def zero_row_sums(X, xp):
    """The projection on matrices whose rows sum to 0: ``X`` minus each row's mean."""
    return X - xp.mean(X, axis=-1, keepdims=True)


def adjoint_solve(hvp, S, xp, *, simplex_rows=False):
    r"""Solve the adjoint system :math:`H\lambda = S` of an implicit step (module docstring), certified.

    Parameters
    ----------
    hvp : callable
        ``hvp(Lam) -> H Lam`` for ``Lam [n, ..., a, b]`` (a leading axis of directions).
    S : array ``[..., a, b]``
        Cotangent of the step's solution.
    simplex_rows : bool
        Rows constrained to a fixed sum: solve :math:`P H P\lambda = P S` on zero row sums.

    Returns
    -------
    lam : array ``[..., a, b]``
    nu : array ``[..., a]`` or None
        On the simplex, the multipliers of the row sums: :math:`H\lambda + \nu 1^T = S`
        (the cotangent of the row sums the solution keeps); ``None`` otherwise.

    Raises
    ------
    ConvergenceError
        The Hessian is not finite, not positive definite (no strict minimiser: no derivative),
        or so ill-conditioned that ``32 eps kappa`` passes :math:`\sqrt\varepsilon`.

    Notes
    -----
    On the simplex the system solved is :math:`(P H P + s(I - P))\lambda = P S`, with ``s`` the
    mean eigenvalue of :math:`PHP` on its range: its solution lies in the range of ``P`` and
    solves the projected system; the added block only fills the complement (it changes no
    eigenvalue the certificate reads beyond placing one inside their range).
    """
    a, b = S.shape[-2], S.shape[-1]
    n = a * b
    batch = tuple(S.shape[:-2])
    eps = float(xp.finfo(S.dtype).eps)
    E = xp.reshape(xp.eye(n, dtype=S.dtype), (n,) + (1,) * len(batch) + (a, b))  # (n, 1.., a, b) directions
    project = (lambda X: zero_row_sums(X, xp)) if simplex_rows else (lambda X: X)
    cols = project(hvp(project(E)))  # (n, .., a, b): column j = P H P e_j
    cols = cols + xp.zeros(batch + (a, b), dtype=S.dtype)  # every batch entry, even where H is constant
    H = xp.moveaxis(xp.reshape(cols, (n,) + batch + (n,)), 0, -1)  # (.., n, n)
    H = 0.5 * (H + xp.matrix_transpose(H))  # symmetric in exact arithmetic; rounding made it not quite
    rhs = xp.reshape(project(S), batch + (n, 1))  # (.., n, 1)
    if not bool(xp.all(xp.isfinite(H))):
        raise _adjoint_error(math.inf, "the Hessian of the step's objective is not finite at the computed minimiser "
                                       "(an infinite curvature, e.g. lp with p < 2 at a zero residual entry)")
    if simplex_rows:
        P = xp.reshape(project(E), (n, n))  # (n, n) the projection, symmetric
        rank = n - a
        s = xp.sum(xp.linalg.diagonal(H), axis=-1) / rank if rank > 0 else xp.ones(batch, dtype=S.dtype)  # (..,)
        H = H + s[..., None, None] * (xp.eye(n, dtype=S.dtype) - P)
    w = xp.linalg.eigvalsh(H)  # (.., n) ascending
    low, high = w[..., 0], w[..., -1]  # (..,)
    if not bool(xp.all(low > 64 * n * eps * xp.abs(high))):
        raise _adjoint_error(math.inf, f"the Hessian of the step's objective is not positive definite at the computed "
                                       f"minimiser (smallest eigenvalue {max_float(-low, xp) * -1:.3e}): it is not a "
                                       "strict minimiser and has no derivative (the implicit function theorem needs "
                                       "one)")
    kappa = max_float(high / low, xp)
    floor = 32 * eps * kappa
    if floor > rtol_ceiling(S.dtype, xp):
        raise _adjoint_error(floor, f"cannot certify the adjoint solve at condition number kappa = {kappa:.2e} "
                                    f"(its rounding alone is about 32 eps kappa = {floor:.1e} relative)")
    lam = xp.linalg.solve(H, rhs)  # (.., n, 1)
    lam = lam + xp.linalg.solve(H, rhs - H @ lam)  # one step of iterative refinement
    res = max_float(fro_norm(H @ lam - rhs, xp) / xp.maximum(fro_norm(rhs, xp), xp.asarray(1e-300, dtype=S.dtype)), xp)
    if not res <= floor:  # also catches nan
        raise _adjoint_error(res, f"the adjoint solve's residual {res:.1e} exceeds its rounding floor {floor:.1e}")
    lam = project(xp.reshape(lam, batch + (a, b)))  # (.., a, b)
    if not simplex_rows:
        return lam, None
    return lam, xp.mean(S - hvp(lam), axis=-1)  # S - H lam is constant along each row: (.., a)


def _adjoint_error(residual, hint):
    return ConvergenceError(SolveReport("direct", "implicit_adjoint", 0, residual, float("nan"), False), hint)


# --------------------------------------------------------------------------- the scan on a linear memory


def implicit_scan_vjp(q, k, v, M0, level_at, loss, do, dM_T, xp, **solve_options):
    r"""Adjoint of a scan of implicit steps on a linear memory: ``M_t = solve(level_at(t), M_{t-1}, k_t, v_t)``.

    ``level_at(t)`` is the memory's :class:`~refmem.level.Level` of step ``t`` (its retention's
    gates are the step's), ``loss`` its bias as a :class:`~refmem.memories.residual_mlp.ResidualLoss`.
    The states are recomputed by the forward's own solves (``solve_options`` as the forward's);
    at each step, backward in time, :math:`S_t \mathrel{+}= do_t q_t^T`, :math:`dq_t = M_t^T do_t`,
    the adjoint system of the module docstring gives :math:`\lambda_t`, and
    :math:`S_{t-1} = dM_{t-1}` from the retention's second derivatives.

    Returns
    -------
    dict
        ``q, k, v``, one entry per gate of the retention, ``initial_state``.
    """
    from ..memories._level_scan import solve_state_step

    T = k.shape[-2]
    Ms = [M0]
    for t in range(T):
        M, _ = solve_state_step(level_at(t), Ms[-1], k[..., t, :], v[..., t, :], t, **solve_options)
        Ms.append(M)
    S = dM_T
    dq, dk, dv, dgates = [], [], [], {}
    for t in reversed(range(T)):
        kt, vt, M, M_prev = k[..., t, :], v[..., t, :], Ms[t + 1], Ms[t]
        S = S + outer(do[..., t, :], q[..., t, :])  # S_t: the read-out o_t = M_t q_t
        dq.append(matvec(xp.matrix_transpose(M), do[..., t, :]))  # (.., d_k)
        ret = level_at(t).retention.bind(xp, k.dtype)

        def hvp(Lam, M=M, kt=kt, vt=vt, ret=ret):
            return bias_hvp(M, kt, vt, loss, Lam, xp) + retention_hvp(ret, M, Lam, xp)

        lam, nu = adjoint_solve(hvp, S, xp, simplex_rows=on_simplex(ret))  # (.., d_v, d_k), (.., d_v) or None
        dk_t, dv_t = bias_vjp(M, kt, vt, loss, lam, xp)
        dk.append(dk_t)
        dv.append(dv_t)
        S, dg = retention_vjp(ret, M, M_prev, lam, xp)  # S_{t-1} before its read-out
        if nu is not None:  # the solution keeps the row sums of M_{t-1} (module docstring, "ambient space")
            S = S + nu[..., None]
        for name, x in dg.items():
            dgates.setdefault(name, []).append(x + xp.zeros(tuple(k.shape[:-2]), dtype=k.dtype))
    stack = lambda xs, axis: xp.stack(xs[::-1], axis=axis)  # noqa: E731
    grads = {"q": stack(dq, -2), "k": stack(dk, -2), "v": stack(dv, -2)}
    grads.update({name: stack(x, -1) for name, x in dgates.items()})
    grads["initial_state"] = S
    return grads
