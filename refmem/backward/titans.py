r"""Backward pass of Titans with a linear memory (momentum under a memory level), recurrent.

Forward (:mod:`refmem.memories.titans`, Titans eqs. 10-14):

.. math::

    S_t = \eta_t S_{t-1} - \theta_t r_t k_t^T, \quad r_t = M_{t-1} k_t - v_t, \qquad
    M_t = (1 - \alpha_t) M_{t-1} + S_t, \qquad o_t = M_t q_t .

Adjoint recurrence
------------------
Two adjoints run backward in time: :math:`A_t = \partial\mathcal L/\partial M_t` and
:math:`B_t = \partial\mathcal L/\partial S_t`. The memory reads the momentum
(:math:`M_t = \dots + S_t`), so the momentum's total adjoint at step ``t`` is
:math:`\bar B_t = B_t + A_t`. Then

.. math::

    A_{t-1} = (1 - \alpha_t) A_t - \theta_t (\bar B_t k_t) k_t^T + do_{t-1} q_{t-1}^T, \qquad
    B_{t-1} = \eta_t \bar B_t,

    dv_t = \theta_t \bar B_t k_t, \quad d\theta_t = -r_t^T \bar B_t k_t, \quad
    dk_t = -\theta_t (M_{t-1}^T \bar B_t k_t + \bar B_t^T r_t), \quad
    d\eta_t = \langle \bar B_t, S_{t-1}\rangle_F, \quad d\alpha_t = -\langle A_t, M_{t-1}\rangle_F,

starting from :math:`A_T = dM_T + do_T q_T^T`, :math:`B_T = dS_T` (the cotangent of
the final momentum, zero when not given), and ending at :math:`dM_0 = A_0`,
:math:`dS_0 = B_0`. With :math:`\eta = \alpha = 0` it is the delta rule's adjoint.
"""

from __future__ import annotations

from ..linalg import matvec, outer
from ..memories.titans import check_titans_inputs, titans_recurrent, titans_step
from .cotangents import check_cotangents, finite_gradients


def mT(x, xp):
    """Transpose of the last two axes."""
    return xp.matrix_transpose(x)


@finite_gradients
def titans_vjp(q, k, v, alpha, eta, theta, *, do, dM_T=None, dS_T=None, initial_state=None,
               initial_momentum=None):
    """Gradients of recurrent linear Titans (module docstring, adjoint recurrence).

    Parameters
    ----------
    q, k, v, alpha, eta, theta, initial_state, initial_momentum
        As :func:`~refmem.memories.titans.titans_recurrent`.
    do : array ``[..., T, d_v]``
        Cotangent of ``o``.
    dM_T, dS_T : array ``[..., d_v, d_k]``, optional
        Cotangents of the final state and of the final momentum (zero when omitted).

    Returns
    -------
    dict
        ``q, k, v, alpha, eta, theta``, ``initial_state`` (``dM_0``) and ``initial_momentum`` (``dS_0``).
    """
    o, M_T, S_T = titans_recurrent(q, k, v, alpha, eta, theta, initial_state=initial_state,
                                          initial_momentum=initial_momentum, return_momentum=True)
    dM_T = check_cotangents(do, dM_T, o, M_T)
    if dS_T is None:
        xp = _namespace(q)
        dS_T = xp.zeros_like(S_T)
    else:
        check_cotangents(do, dS_T, o, S_T)
    xp, M0, S0 = check_titans_inputs(q, k, v, alpha, eta, theta, initial_state, initial_momentum)
    T = k.shape[-2]
    Ms, Ss = [M0], [S0]  # M_0 .. M_T, S_0 .. S_T
    for t in range(T):
        M, S = titans_step(Ms[-1], Ss[-1], k[..., t, :], v[..., t, :], alpha[..., t], eta[..., t], theta[..., t])
        Ms.append(M)
        Ss.append(S)
    A, B = dM_T, dS_T
    dq, dk, dv, da, de, dth = [], [], [], [], [], []
    for t in reversed(range(T)):
        kt, th = k[..., t, :], theta[..., t, None]  # (.., d_k), (.., 1)
        A = A + outer(do[..., t, :], q[..., t, :])  # A_t: the read-out o_t = M_t q_t
        dq.append(matvec(mT(Ms[t + 1], xp), do[..., t, :]))  # M_t^T do_t
        Bt = B + A  # the momentum's total adjoint: M_t reads S_t
        r = matvec(Ms[t], kt) - v[..., t, :]  # r_t, (.., d_v)
        Bk = matvec(Bt, kt)  # (.., d_v)
        dv.append(th * Bk)
        dth.append(-xp.sum(r * Bk, axis=-1))
        dk.append(-th * (matvec(mT(Ms[t], xp), Bk) + matvec(mT(Bt, xp), r)))
        de.append(xp.sum(Bt * Ss[t], axis=(-2, -1)))
        da.append(-xp.sum(A * Ms[t], axis=(-2, -1)))
        A = (1 - alpha[..., t, None, None]) * A - th[..., None] * outer(Bk, kt)  # A_{t-1} before its read-out
        B = eta[..., t, None, None] * Bt  # B_{t-1}
    stack = lambda xs, axis: xp.stack(xs[::-1], axis=axis)  # noqa: E731
    return {"q": stack(dq, -2), "k": stack(dk, -2), "v": stack(dv, -2), "alpha": stack(da, -1),
            "eta": stack(de, -1), "theta": stack(dth, -1), "initial_state": A, "initial_momentum": B}


def _namespace(x):
    from ..backends import namespace_of

    return namespace_of(x)
