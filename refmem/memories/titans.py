r"""Titans with a linear memory: a momentum level under a memory level (MATH.md 5c, Titans eqs. 10-14).

.. math::

    S_t = \eta_t S_{t-1} - \theta_t \nabla l(M_{t-1}; k_t, v_t), \qquad
    M_t = (1 - \alpha_t) M_{t-1} + S_t, \qquad o_t = M_t q_t,

with the l2 objective :math:`l(M; k, v) = \tfrac12\|M k - v\|^2`, so
:math:`\nabla l(M_{t-1}) = (M_{t-1} k_t - v_t) k_t^T` (Titans writes
:math:`\|M k - v\|^2` without the :math:`\tfrac12`: its :math:`\theta` is half
of ours). The inputs keep the Titans paper's names: :math:`\eta_t` is the
momentum decay, :math:`\theta_t` the step size of the surprise, :math:`\alpha_t`
the forgetting. :func:`titans_gates` translates them, once, into what they are
(the fraction of the memory kept :math:`1 - \alpha_t`, the momentum decay, the
step); everything below it uses those names (``specs/titans.md``; the meanings of
``alpha`` / ``eta`` across refmem are tabulated in ``specs/README.md``).

Two levels, both explicit steps under a forget gate (:func:`titans_levels`):

- momentum (faster, it reads the token): key-less objective
  :math:`-\langle S, u\rangle` with the "value" :math:`u = -\nabla l(M_{t-1}; k_t, v_t)`
  (the surprise), retention :math:`\frac{1}{2\theta}\|S - \eta S_{t-1}\|^2`;
- memory (reads the momentum): key-less objective :math:`-\langle M, S_t\rangle`,
  retention :math:`\tfrac12\|M - (1-\alpha) M_{t-1}\|^2`.

With :math:`\eta = 0` and :math:`\alpha = 0` it is the delta rule with :math:`b = \theta`.
"""

from __future__ import annotations

from ..level import Level
from ..linalg import matvec, outer
from ..objectives import Inner
from ..parallel import workers_option
from ..retentions import ForgetGate
from ..validation import check_arrays, finite_outputs
from ._inputs import check_sequence, check_step_gate, initial, random_inputs


def surprise(M, k, v):
    """``-grad l(M; k, v) = -(M k - v) k^T`` for the l2 objective: the momentum level's value."""
    return -outer(matvec(M, k) - v, k)  # (.., d_v) x (.., d_k) -> (.., d_v, d_k)


def titans_gates(alpha, eta, theta):
    """Titans' paper names translated into what they are: ``(kept, momentum_decay, step)``.

    ``kept = 1 - alpha`` is the fraction of ``M_{t-1}`` the memory keeps,
    ``momentum_decay = eta`` the fraction of ``S_{t-1}`` the momentum keeps,
    ``step = theta`` the step size of the surprise.
    """
    return 1 - alpha, eta, theta


def titans_step(M, S, k, v, alpha, eta, theta):
    """One Titans step ``(M, S) -> (M_t, S_t)`` with gates ``[...]`` (paper names)."""
    kept, momentum_decay, step = titans_gates(alpha, eta, theta)
    S = momentum_decay[..., None, None] * S + step[..., None, None] * surprise(M, k, v)  # (.., d_v, d_k)
    M = kept[..., None, None] * M + S  # (.., d_v, d_k)
    return M, S


def check_titans_gates(alpha, eta, theta, k, xp, *, positive_step=False):
    """Titans' gates: one per step ``[..., T]``; ``alpha``, ``eta`` in ``[0, 1]``; ``theta >= 0`` (``> 0`` if ``positive_step``)."""
    check_step_gate(alpha, "alpha", k, xp)
    check_step_gate(eta, "eta", k, xp)
    check_step_gate(theta, "theta", k, xp, low=0.0, low_open=positive_step, high=None)


def check_titans_inputs(q, k, v, alpha, eta, theta, initial_state, initial_momentum):
    """Validate Titans' inputs (shared by the recurrent, chunked and mini-batch forms); return ``(xp, M_0, S_0)``."""
    xp = check_sequence(q, k, v, initial_state, alpha=alpha, eta=eta, theta=theta)
    check_arrays(k=k, initial_momentum=initial_momentum)
    check_titans_gates(alpha, eta, theta, k, xp)
    M0 = initial(initial_state, k, v, xp)
    if initial_momentum is not None and tuple(initial_momentum.shape) != tuple(M0.shape):
        raise ValueError(f"initial_momentum must have shape [..., d_v, d_k] = {tuple(M0.shape)}; "
                         f"got {tuple(initial_momentum.shape)}")
    return xp, M0, initial(initial_momentum, k, v, xp)


@workers_option
@finite_outputs
def titans_recurrent(q, k, v, alpha, eta, theta, *, initial_state=None, initial_momentum=None,
                            return_momentum=False):
    """Recurrent Titans with a linear memory.

    Parameters
    ----------
    q, k : array ``[..., T, d_k]``
    v : array ``[..., T, d_v]``
    alpha : array ``[..., T]``
        Forgetting ``alpha_t`` in ``[0, 1]`` (``M`` keeps ``1 - alpha_t`` of itself).
    eta : array ``[..., T]``
        Momentum decay ``eta_t`` in ``[0, 1]``.
    theta : array ``[..., T]``
        Surprise step size ``theta_t >= 0``.
    initial_state, initial_momentum : array ``[..., d_v, d_k]``, optional (zeros)
    return_momentum : bool
        Also return the final momentum ``S_T``.

    Returns
    -------
    o : array ``[..., T, d_v]``
    M : array ``[..., d_v, d_k]``
    S : array ``[..., d_v, d_k]``, only with ``return_momentum=True``

    Examples
    --------
    Without momentum (``eta = 0``) and forgetting (``alpha = 0``) Titans is the
    delta rule with step ``theta``:

    >>> import numpy as np
    >>> from refmem.memories.titans import titans_recurrent
    >>> from refmem.memories.delta_rule import delta_rule_recurrent
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.standard_normal((2, 5, 4))      # T = 5, d_k = 4
    >>> v = rng.standard_normal((5, 3))            # d_v = 3
    >>> zero, theta = np.zeros(5), np.full(5, 0.2)
    >>> o, M = titans_recurrent(q, k, v, zero, zero, theta)
    >>> o_d, M_d = delta_rule_recurrent(q, k, v, theta)
    >>> bool(np.allclose(M, M_d)), bool(np.allclose(o, o_d))
    (True, True)
    """
    xp, M, S = check_titans_inputs(q, k, v, alpha, eta, theta, initial_state, initial_momentum)
    outs = []
    for t in range(k.shape[-2]):
        M, S = titans_step(M, S, k[..., t, :], v[..., t, :], alpha[..., t], eta[..., t], theta[..., t])
        outs.append(matvec(M, q[..., t, :]))  # (.., d_v)
    o = xp.stack(outs, axis=-2)
    return (o, M, S) if return_momentum else (o, M)


def titans_momentum_level(momentum_decay, step):
    """The momentum level: ``S_t = argmin_S -<S, u> + 1/(2 step) ||S - momentum_decay S_{t-1}||^2`` (explicit).

    A forget gate with step size ``step`` (Titans' ``theta``) that keeps
    ``momentum_decay`` (Titans' ``eta``) of ``S_{t-1}``. Solve it with ``k=None``
    and ``v = surprise(M_{t-1}, k_t, v_t)``.
    """
    return Level(Inner(), ForgetGate(eta=step, alpha=momentum_decay), step="explicit", name="titans_momentum")


def titans_memory_level(kept):
    """The memory level: ``M_t = argmin_M -<M, S_t> + 1/2 ||M - kept M_{t-1}||^2`` (explicit).

    A forget gate with step 1 that keeps ``kept = 1 - alpha`` (Titans' forgetting
    ``alpha``) of ``M_{t-1}``. Solve it with ``k=None`` and ``v = S_t``.
    """
    return Level(Inner(), ForgetGate(eta=1.0, alpha=kept), step="explicit", name="titans_memory")


def titans_levels(alpha, eta, theta):
    """``(momentum level, memory level)`` of one Titans step, from the paper's gates (momentum first: the memory reads it)."""
    kept, momentum_decay, step = titans_gates(alpha, eta, theta)
    return titans_momentum_level(momentum_decay, step), titans_memory_level(kept)


def make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64"):
    """Random valid inputs (``q, k, v`` and the gates) in the registry's signature (:class:`~refmem.memories.MemorySpec`)."""
    return random_inputs(seed, batch, T, d_k, d_v, xp, dtype, alpha=(0.0, 0.2), eta=(0.5, 0.95), theta=(0.05, 0.5))
