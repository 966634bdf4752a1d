r"""Backward passes of the Miras memories with a linear memory: Yaad, Moneta, Memora (recurrent).

Each step of these scans is one level solved in closed form at the previous
state :math:`M_{t-1}`, with the attentional bias's gradient
:math:`g_t = u(r_t)\,k_t^T`, :math:`r_t = M_{t-1}k_t - v_t`, ``u`` the derivative of the
bias in the residual (l2: ``r``; Huber: clip or ball projection; lp:
:math:`p\,\mathrm{sign}(r)|r|^{p-1}`), and a retention's explicit step
:math:`M_t = \mathrm{step}(M_{t-1}, g_t)` (:mod:`refmem.backward.retention_steps`).

Adjoint recurrence
------------------
With :math:`S_t = \partial\mathcal L/\partial M_t` (every later use counted),
starting from :math:`S_T = dM_T + do_T q_T^T`:

.. math::

    (dM^{\rm step}, dg_t, d\mathrm{gates}_t) = \mathrm{step}^*(S_t), \qquad
    du_t = dg_t\,k_t, \qquad dr_t = J_u(r_t)^T du_t,

    dk_t = dg_t^T u_t + M_{t-1}^T dr_t, \qquad dv_t = -dr_t, \qquad dq_t = M_t^T do_t,

    S_{t-1} = dM^{\rm step} + dr_t\,k_t^T + do_{t-1} q_{t-1}^T, \qquad dM_0 = S_0,

with :math:`J_u` the Hessian of the bias in the residual (diagonal for the
per-coordinate biases; :math:`\frac{\delta}{\|r\|}(I - \hat r\hat r^T)` outside the
ball for the Huber norm mode). For Yaad with the forget gate, ``step`` is
:math:`\alpha M - \eta g` and this is the delta rule's adjoint with a clipped
residual.

Yaad's implicit step
--------------------
Its closed form (:class:`~refmem.objectives.huber.Huber`) is
:math:`M_t = C - \eta\,u(w)\,k^T` with :math:`C = \alpha M_{t-1}`, :math:`s = \|k\|^2`,
:math:`r_0 = C k - v`, :math:`w = r_0/(1 + \eta s)`. Its adjoint:

.. math::

    du = -\eta S k, \quad dw = J_u(w)^T du, \quad dr_0 = \frac{dw}{1 + \eta s}, \quad
    d\rho = -\frac{w^T dw}{1 + \eta s} \ (\rho = 1 + \eta s),

    dC = S + dr_0 k^T, \quad dk = -\eta S^T u + C^T dr_0 + 2\eta\,d\rho\,k, \quad dv = -dr_0,

    d\eta = -u^T S k + s\,d\rho, \quad d\alpha = \langle dC, M_{t-1}\rangle, \quad S_{t-1} = \alpha\,dC + do_{t-1}q_{t-1}^T .

Implicit steps of Moneta and Memora
-----------------------------------
They have no closed form (the forward solves each level iteratively); their
adjoint is the implicit function theorem's, :mod:`refmem.backward.implicit_steps`:
at each step one symmetric solve with the step objective's Hessian at the computed
minimiser, :math:`H_t\lambda_t = S_t` (on zero row sums for Memora's simplex rows), then
:math:`dk_t, dv_t` from the bias's mixed second derivatives and
:math:`S_{t-1}, d\mathrm{gates}_t` from the retention's.
"""

from __future__ import annotations

from ..level import Level
from ..linalg import matvec, outer, sq_norm
from ..memories.memora import memora_recurrent, uniform_state
from ..memories.moneta import moneta_level, moneta_recurrent
from ..objectives import L2
from ..retentions.kl_simplex import KLSimplex
from ..memories.residual_mlp import ResidualLoss
from ..memories.yaad import yaad_recurrent
from ..objectives.huber import Huber
from ..validation import expand_vector
from .cotangents import check_cotangents, finite_gradients, forward_and_cotangents
from .implicit_steps import implicit_scan_vjp
from .retention_steps import forget_gate_step, forget_gate_step_vjp, kl_step, kl_step_vjp, lq_step, lq_step_vjp


def mT(x, xp):
    """Transpose of the last two axes."""
    return xp.matrix_transpose(x)


def ball_projection_vjp(r, du, delta, xp):
    r"""Adjoint of the projection onto the ball :math:`\|r\| \le \delta`: ``du`` inside, :math:`\frac{\delta}{\|r\|}(I - \hat r\hat r^T)du` outside."""
    n = xp.sqrt(sq_norm(r, xp))  # (..,)
    outside = expand_vector(n > delta, xp)  # (.., 1)
    safe = expand_vector(xp.where(n > delta, n, xp.ones_like(n)), xp)  # (.., 1)
    rh = r / safe  # (.., d)
    proj = (delta / safe) * (du - rh * expand_vector(xp.sum(rh * du, axis=-1), xp))  # (.., d)
    return xp.where(outside, proj, du)


def residual_derivative(loss):
    """``(u, u_vjp)`` of a per-coordinate bias (:class:`~refmem.memories.residual_mlp.ResidualLoss`).

    ``u(r, xp)`` is the bias's derivative in the residual; ``u_vjp(r, du, xp) = J_u(r)^T du``.
    """
    return loss.grad, lambda r, du, xp: loss.grad_derivative(r, xp) * du


def huber_derivative(delta, mode):
    """``(u, u_vjp)`` of the Huber bias: clip per coordinate, or the ball projection (``mode="norm"``)."""
    if mode == "norm":
        return Huber(delta=delta, mode=mode).psi, lambda r, du, xp: ball_projection_vjp(r, du, float(delta), xp)
    return residual_derivative(ResidualLoss("huber", delta=float(delta)))


def explicit_scan_vjp(q, k, v, M0, gates, u, u_vjp, step, step_vjp, do, dM_T, xp):
    """The adjoint recurrence of the module docstring, for any explicit step.

    ``gates``: ``{name: [..., T]}``; ``step(M, g, **gates_t)``, ``step_vjp(S, M, g, **gates_t) -> (dM, dg, dgates_t)``.
    """
    T = k.shape[-2]
    at = lambda t: {name: x[..., t] for name, x in gates.items()}  # noqa: E731  (gates of step t)
    Ms, us = [M0], []  # M_0 .. M_T; u(r_t)
    for t in range(T):
        r = matvec(Ms[-1], k[..., t, :]) - v[..., t, :]  # (.., d_v)
        us.append(u(r, xp))
        Ms.append(step(Ms[-1], outer(us[-1], k[..., t, :]), **at(t)))  # (.., d_v, d_k)
    S = dM_T
    dq, dk, dv, dgates = [], [], [], {name: [] for name in gates}
    for t in reversed(range(T)):
        kt, M = k[..., t, :], Ms[t]  # (.., d_k), M_{t-1}
        S = S + outer(do[..., t, :], q[..., t, :])  # S_t: the read-out o_t = M_t q_t
        dq.append(matvec(mT(Ms[t + 1], xp), do[..., t, :]))  # (.., d_k)
        r = matvec(M, kt) - v[..., t, :]  # (.., d_v)
        dM, dg, dg_t = step_vjp(S, M, outer(us[t], kt), **at(t))
        dr = u_vjp(r, matvec(dg, kt), xp)  # (.., d_v)
        dk.append(matvec(mT(dg, xp), us[t]) + matvec(mT(M, xp), dr))  # (.., d_k)
        dv.append(-dr)
        for name in gates:
            dgates[name].append(dg_t[name])
        S = dM + outer(dr, kt)  # S_{t-1} before its read-out
    stack = lambda xs, axis: xp.stack(xs[::-1], axis=axis)  # noqa: E731
    grads = {"q": stack(dq, -2), "k": stack(dk, -2), "v": stack(dv, -2)}
    grads.update({name: stack(x, -1) for name, x in dgates.items()})
    grads["initial_state"] = S
    return grads


def yaad_implicit_scan_vjp(q, k, v, M0, alpha, eta, u, u_vjp, do, dM_T, xp):
    """Adjoint of Yaad's implicit (closed-form) scan (module docstring, "Yaad's implicit step")."""
    T = k.shape[-2]
    Ms = [M0]
    for t in range(T):
        kt, e = k[..., t, :], expand_vector(eta[..., t], xp)  # (.., d_k), (.., 1)
        C = alpha[..., t, None, None] * Ms[-1]  # (.., d_v, d_k)
        w = (matvec(C, kt) - v[..., t, :]) / (1 + e * expand_vector(sq_norm(kt, xp), xp))  # (.., d_v)
        Ms.append(C - outer(e * u(w, xp), kt))
    S = dM_T
    dq, dk, dv, da, de = [], [], [], [], []
    for t in reversed(range(T)):
        kt, e = k[..., t, :], expand_vector(eta[..., t], xp)
        S = S + outer(do[..., t, :], q[..., t, :])
        dq.append(matvec(mT(Ms[t + 1], xp), do[..., t, :]))
        s = expand_vector(sq_norm(kt, xp), xp)  # (.., 1)
        C = alpha[..., t, None, None] * Ms[t]
        rho = 1 + e * s  # (.., 1)
        w = (matvec(C, kt) - v[..., t, :]) / rho  # (.., d_v)
        uw = u(w, xp)
        Sk = matvec(S, kt)  # (.., d_v)
        dw = u_vjp(w, -e * Sk, xp)  # (.., d_v)
        dr0 = dw / rho
        drho = -xp.sum(w * dw, axis=-1, keepdims=True) / rho  # (.., 1)
        dC = S + outer(dr0, kt)
        dk.append(-e * matvec(mT(S, xp), uw) + matvec(mT(C, xp), dr0) + 2 * e * drho * kt)
        dv.append(-dr0)
        de.append((-xp.sum(uw * Sk, axis=-1, keepdims=True) + s * drho)[..., 0])
        da.append(xp.sum(dC * Ms[t], axis=(-2, -1)))
        S = alpha[..., t, None, None] * dC
    stack = lambda xs, axis: xp.stack(xs[::-1], axis=axis)  # noqa: E731
    return {"q": stack(dq, -2), "k": stack(dk, -2), "v": stack(dv, -2), "alpha": stack(da, -1),
            "eta": stack(de, -1), "initial_state": S}


@finite_gradients
def yaad_vjp(q, k, v, alpha, eta, *, do, dM_T=None, delta=1.0, mode="coordinate", step="explicit",
             initial_state=None):
    """Gradients of recurrent Yaad (module docstring): explicit or implicit (closed-form) step.

    Parameters
    ----------
    q, k, v, alpha, eta, delta, mode, step, initial_state
        As :func:`~refmem.memories.yaad.yaad_recurrent`.
    do : array ``[..., T, d_v]``
        Cotangent of ``o``.
    dM_T : array ``[..., d_v, d_k]``, optional
        Cotangent of the final state (zero when omitted).

    Returns
    -------
    dict
        ``q, k, v, alpha, eta, initial_state``.

    Notes
    -----
    The Huber bias has kinks (``|r_i| = delta``, or ``||r|| = delta``): there the
    returned gradient is the one-sided derivative from inside the quadratic zone.
    """
    xp, M0, dM_T, _ = forward_and_cotangents(yaad_recurrent, (q, k, v, alpha, eta), do=do, dM_T=dM_T,
                                              initial_state=initial_state, delta=delta, mode=mode, step=step)
    u, u_vjp = huber_derivative(delta, mode)
    if step == "implicit":
        return yaad_implicit_scan_vjp(q, k, v, M0, alpha, eta, u, u_vjp, do, dM_T, xp)

    def step_vjp(S, M, g, alpha, eta):
        return forget_gate_step_vjp(S, M, g, alpha, eta, xp)

    return explicit_scan_vjp(q, k, v, M0, {"alpha": alpha, "eta": eta}, u, u_vjp,
                             lambda M, g, alpha, eta: forget_gate_step(M, g, alpha, eta, xp), step_vjp, do, dM_T, xp)


@finite_gradients
def moneta_vjp(q, k, v, alpha, eta, *, do, dM_T=None, p=3.0, lq=4.0, step="explicit", method="closed",
               initial_state=None):
    r"""Gradients of recurrent Moneta (module docstring; lq FTRL in :mod:`~refmem.backward.retention_steps`).

    Parameters
    ----------
    q, k, v, alpha, eta, p, lq, step, method, initial_state
        As :func:`~refmem.memories.moneta.moneta_recurrent` (the implicit step needs
        ``method="iterative"``, like its forward).
    do, dM_T
        Cotangents of ``o`` and of the final state (``dM_T`` zero when omitted).

    Returns
    -------
    dict
        The gradients by input name, as :func:`yaad_vjp`: ``q, k, v, alpha, eta, initial_state``.

    Notes
    -----
    At the default start :math:`M_0 = 0` the map :math:`\nabla\psi_q` is not differentiable
    (``q != 2``); ``initial_state``'s gradient there is the array of partial derivatives
    (:func:`~refmem.backward.retention_steps.lq_mirror_jacobian_product`).
    The implicit step's gradient is that of the exact minimiser of each level
    (:mod:`~refmem.backward.implicit_steps`), read at the computed one; it raises
    :class:`~refmem.solvers.ConvergenceError` where the adjoint system cannot be certified.
    """
    xp, M0, dM_T, _ = forward_and_cotangents(moneta_recurrent, (q, k, v, alpha, eta), do=do, dM_T=dM_T,
                                              initial_state=initial_state, p=p, lq=lq, step=step, method=method)
    bias = ResidualLoss("lp", p=float(p))
    if step == "implicit":
        def level_at(t):
            return moneta_level(alpha[..., t], eta[..., t], p=p, lq=lq, step="implicit")

        return implicit_scan_vjp(q, k, v, M0, level_at, bias, do, dM_T, xp, method=method)
    u, u_vjp = residual_derivative(bias)
    lq = float(lq)
    return explicit_scan_vjp(q, k, v, M0, {"alpha": alpha, "eta": eta}, u, u_vjp,
                             lambda M, g, alpha, eta: lq_step(M, g, alpha, eta, lq, xp),
                             lambda S, M, g, alpha, eta: lq_step_vjp(S, M, g, alpha, eta, lq, xp), do, dM_T, xp)


@finite_gradients
def memora_vjp(q, k, v, eta, *, do, dM_T=None, a=1.0, c=1.0, step="explicit", method="closed", initial_state=None):
    """Gradients of recurrent Memora (module docstring; the KL step in :mod:`~refmem.backward.retention_steps`).

    Parameters
    ----------
    q, k, v, eta, a, c, step, method, initial_state
        As :func:`~refmem.memories.memora.memora_recurrent` (``a`` and ``c`` are numbers, not differentiated;
        the implicit step needs ``method="iterative"``, like its forward).
    do, dM_T
        Cotangents of ``o`` and of the final state (``dM_T`` zero when omitted).

    Returns
    -------
    dict
        ``q, k, v, eta, initial_state``. ``initial_state``'s gradient is in the
        ambient space of positive matrices (what autodiff through the forward
        gives); restricted to the simplex it is its projection on zero row sums.
        The implicit step's gradient is that of the exact minimiser of each level
        (:mod:`~refmem.backward.implicit_steps`, the adjoint on zero row sums), read at the computed one.
    """
    o, M_T = memora_recurrent(q, k, v, eta, a=a, c=c, step=step, method=method, initial_state=initial_state)
    dM_T = check_cotangents(do, dM_T, o, M_T)
    xp = _namespace(q)
    M0 = uniform_state(k.shape[:-2], v.shape[-1], k.shape[-1], float(c), xp, k.dtype) if initial_state is None \
        else initial_state
    if step == "implicit":
        def level_at(t):
            return Level(L2(), KLSimplex(eta=eta[..., t], a=a, c=c), step="implicit", name="memora")

        return implicit_scan_vjp(q, k, v, M0, level_at, ResidualLoss("l2"), do, dM_T, xp, method=method)
    u, u_vjp = residual_derivative(ResidualLoss("l2"))
    a, c = float(a), float(c)
    return explicit_scan_vjp(q, k, v, M0, {"eta": eta}, u, u_vjp,
                             lambda M, g, eta: kl_step(M, g, eta, a, c, xp),
                             lambda S, M, g, eta: kl_step_vjp(S, M, g, eta, a, c, xp), do, dM_T, xp)


def _namespace(x):
    from ..backends import namespace_of

    return namespace_of(x)
