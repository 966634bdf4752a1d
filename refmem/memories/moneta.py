r"""Moneta (Miras): lp attentional bias under the lq retention (MATH.md 3, 4, 5h).

One level per token with the bias :math:`l(M) = \|M k_t - v_t\|_p^p`
(:class:`refmem.objectives.lp.Lp`) and Moneta's lq retention in its consistent
(re-derived) form, :class:`refmem.retentions.lq_moneta.LqMoneta`: FTRL with
:math:`\psi(M) = \tfrac12\|M\|_q^2`, whose accumulator is a function of the
state, :math:`A_{t-1} = \nabla\psi(M_{t-1})`. The explicit step is

.. math::

    A_t = \alpha_t \nabla\psi(M_{t-1}) - \eta_t \nabla l(M_{t-1}), \qquad
    M_t = \nabla\psi^*(A_t) = \operatorname{sign}(A_t)|A_t|^{q^*-1} / \|A_t\|_{q^*}^{q^*-2},
    \qquad o_t = M_t q_t,

``q* = q/(q-1)``. (The printed rule :math:`M_t = A_t/\|A_t\|_q^{q-2}` is not this
map unless ``q = 2``; :mod:`refmem.retentions.lq_moneta` documents what it
recovers and a ``refmem verify`` check shows the difference on a Moneta scan.)
Because ``A`` is recovered from ``M``, the state of the scan is ``M`` alone
(``initial_state`` a matrix ``[..., d_v, d_k]``, default 0, whose accumulator is 0).

``step="implicit"`` solves :math:`\min_M l(M) + \mathrm{Ret}(M, M_{t-1})` with the
true lp loss: no closed form, iterative only. Both steps are solved
iteratively by :func:`refmem.level.solve` (the retention's preferred solver).
Miras' defaults are ``p = 3``, ``q = 4``; ``lq`` names the retention exponent
because ``q`` is the query.

:func:`moneta_deep_recurrent`: Moneta on the residual-MLP memory of
:mod:`refmem.memories.deep_memory` (lp on ``M(k) - v``; the lq retention on each
weight matrix, :math:`\psi(W) = \tfrac12\|W_1\|_q^2 + \tfrac12\|W_2\|_q^2`). Its iterative
steps need a start without an all-zero weight matrix when ``q > 2``: the lq
Hessian vanishes at 0 and the retention's Newton solver (``newton_fd``) then
stops with a singular-matrix error (loudly); the closed explicit step has no
such restriction, and the default start (``W1 = 0``) is fine for it.
"""

from __future__ import annotations

from ..level import Level
from ..objectives.lp import Lp
from ..retentions.lq_moneta import LqMoneta
from ..validation import finite_outputs
from ._inputs import check_forget_and_step, check_sequence, initial, random_inputs
from ._level_scan import level_scan
from .deep_memory import deep_scan
from .residual_mlp import ResidualLoss


def moneta_level(alpha, eta, *, p=3.0, lq=4.0, step="explicit"):
    """One Moneta step as a level: lp bias, lq retention (consistent FTRL form)."""
    return Level(Lp(p=p), LqMoneta(q=lq, alpha=alpha, eta=eta), step=step, name="moneta")


@finite_outputs
def moneta_recurrent(q, k, v, alpha, eta, *, p=3.0, lq=4.0, step="explicit", method="closed", initial_state=None):
    """Recurrent Moneta with a linear memory.

    Parameters
    ----------
    q, k, v, eta, step, method, initial_state
        As :func:`~refmem.memories.yaad.yaad_recurrent`.
    alpha : array ``[..., T]``
        Forgetting of the FTRL accumulator, in ``[0, 1]``.
    p : float
        Exponent of the bias, ``>= 1``.
    lq : float
        Exponent ``q`` of the retention, ``1 < q < inf``.

    Returns
    -------
    o : array ``[..., T, d_v]``, M : array ``[..., d_v, d_k]``
    """
    xp = check_sequence(q, k, v, initial_state, alpha=alpha, eta=eta)
    check_forget_and_step(alpha, eta, k, xp)
    Lp(p=p)  # validates p before the scan starts
    LqMoneta(q=lq)  # validates lq before the scan starts

    def level_at(t):
        return moneta_level(alpha[..., t], eta[..., t], p=p, lq=lq, step=step)

    return level_scan(q, k, v, level_at, initial(initial_state, k, v, xp), xp, method=method)


@finite_outputs
def moneta_deep_recurrent(q, k, v, alpha, eta, *, p=3.0, lq=4.0, step="explicit", method="closed",
                          initial_state=None, hidden=None, activation="tanh"):
    """Moneta on the deep memory ``M(x) = x + W1 sigma(W2 x)`` (``d_k = d_v``); returns ``(o, (W1, W2))``."""
    xp = check_sequence(q, k, v, alpha=alpha, eta=eta)
    check_forget_and_step(alpha, eta, k, xp)
    LqMoneta(q=lq)

    def retention_at(t):
        return LqMoneta(q=lq, alpha=alpha[..., t], eta=eta[..., t])

    return deep_scan(q, k, v, retention_at, initial_state=initial_state, hidden=hidden,
                     loss=ResidualLoss("lp", p=p), step=step, method=method, activation=activation)


def make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64"):
    """Random valid inputs (``q, k, v`` and the gates) in the registry's signature (:class:`~refmem.memories.MemorySpec`)."""
    # Small steps: the explicit lp (p = 3) gradient grows with |r|^2 and the lq (q = 4) link is not
    # Lipschitz at zero entries, so larger steps diverge on O(1) data (measured: eta up to 0.5 made
    # 2/3 of random T = 100 cases overflow; eta <= 0.01 none of 72).
    return random_inputs(seed, batch, T, d_k, d_v, xp, dtype, alpha=(0.8, 1.0), eta=(0.001, 0.01))
