r"""Titans with the deep memory: the momentum level under the memory level, on MLP weights (MATH.md 5c).

.. math::

    S_t = \eta_t S_{t-1} - \theta_t \nabla_W l(W_{t-1}; k_t, v_t), \qquad
    W_t = (1 - \alpha_t) W_{t-1} + S_t, \qquad o_t = \mathcal M_{W_t}(q_t),

for each weight matrix of the residual MLP :math:`\mathcal M(x) = x + W_1\sigma(W_2 x)`
(:mod:`refmem.memories.deep_memory`), with the gradient from its hand-written
backward pass and any bias on the residual (:class:`~refmem.memories.residual_mlp.ResidualLoss`,
``l2`` by default: Titans' objective up to its factor 2, see :mod:`refmem.memories.titans`).
The two levels are exactly those of the linear Titans
(:func:`refmem.memories.titans.titans_levels`), applied to ``W_1`` and to
``W_2``: a key-less level on a matrix does not care which matrix it is. Each
level is solved by :func:`refmem.level.solve`, in closed form or iteratively.

With ``eta = 0`` and ``alpha = 0`` it is the deep memory's gradient-descent
scan with step ``theta`` (a check). State: ``(W1, W2)``; momentum ``(S1, S2)``.
"""

from __future__ import annotations

from ..level import solve
from ..validation import check_arrays, check_scan_state, finite_outputs
from ._inputs import check_sequence
from .residual_mlp import check_params, deep_loss_grad, default_params, mlp_forward, residual_loss
from .titans import check_titans_gates, titans_levels


@finite_outputs
def titans_deep_recurrent(q, k, v, alpha, eta, theta, *, initial_state=None, initial_momentum=None, hidden=None,
                          loss=None, method="closed", activation="tanh", return_momentum=False):
    """Recurrent Titans on the deep memory (``d_k = d_v = d``).

    Parameters
    ----------
    q, k, v : array ``[..., T, d]``
    alpha : array ``[..., T]``
        Forgetting in ``[0, 1]``.
    eta : array ``[..., T]``
        Momentum decay in ``[0, 1]``.
    theta : array ``[..., T]``
        Surprise step size ``> 0``.
    initial_state : tuple ``(W1 [..., d, h], W2 [..., h, d])``, optional
        Default ``W1 = 0``, ``W2 = I`` (:func:`~refmem.memories.residual_mlp.default_params`).
    initial_momentum : tuple ``(S1, S2)`` shaped like the state, optional (zeros)
    loss : ResidualLoss or str, optional (``l2``)
    method : {"closed", "iterative"}
        How each of the two levels is solved.
    return_momentum : bool

    Returns
    -------
    o : array ``[..., T, d]``, state ``(W1, W2)`` [, momentum ``(S1, S2)``]
    """
    xp = check_sequence(q, k, v, alpha=alpha, eta=eta, theta=theta)
    d = k.shape[-1]
    if v.shape[-1] != d:
        raise ValueError(f"the deep memory maps d to d: v must have last dimension d_k = {d}; got {tuple(v.shape)}")
    check_titans_gates(alpha, eta, theta, k, xp, positive_step=True)
    loss = residual_loss(loss)
    if initial_state is None:
        h = d if hidden is None else int(hidden)
        if h < 1:
            raise ValueError(f"hidden must be >= 1; got {hidden}")
        W = default_params(k.shape[:-2], d, h, xp, k.dtype)
    else:
        W = check_params(initial_state, d, xp, k.dtype, batch=k.shape[:-2])
    if initial_momentum is None:
        S = (xp.zeros_like(W[0]), xp.zeros_like(W[1]))
    else:
        if not isinstance(initial_momentum, tuple) or len(initial_momentum) != 2:
            raise TypeError("initial_momentum must be a pair (S1, S2) shaped like (W1, W2)")
        check_arrays(k=k, initial_momentum_S1=initial_momentum[0], initial_momentum_S2=initial_momentum[1])
        if any(tuple(s.shape) != tuple(w.shape) for s, w in zip(initial_momentum, W)):
            raise ValueError(f"initial_momentum must have the shapes of the state {tuple(W[0].shape)}, "
                             f"{tuple(W[1].shape)}; got {tuple(initial_momentum[0].shape)}, "
                             f"{tuple(initial_momentum[1].shape)}")
        S = initial_momentum
    outs = []
    for t in range(k.shape[-2]):
        _, g1, g2 = deep_loss_grad(W[0], W[1], k[..., t, :], v[..., t, :], loss, xp, activation)
        check_scan_state((g1, g2), t, xp)  # an overflowing gradient is a DivergenceError at step t
        mom, mem = titans_levels(alpha[..., t], eta[..., t], theta[..., t])
        S = tuple(solve(mom, S_i, None, -g_i, method=method)[0] for S_i, g_i in zip(S, (g1, g2)))  # surprise = -grad
        W = tuple(solve(mem, W_i, None, S_i, method=method)[0] for W_i, S_i in zip(W, S))
        check_scan_state(W + S, t, xp)
        outs.append(mlp_forward(W[0], W[1], q[..., t, :], xp, activation)[0])  # (.., d)
    o = xp.stack(outs, axis=-2) if outs else xp.zeros(tuple(v.shape), dtype=v.dtype)
    return (o, W, S) if return_momentum else (o, W)
