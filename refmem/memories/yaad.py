r"""Yaad (Miras): Huber attentional bias under a forget gate (MATH.md 3, 4, 5h).

One level per token, with the Huber bias :math:`h_\delta` on the residual
(:class:`refmem.objectives.huber.Huber`, per coordinate or on the norm) and
the forget-gate retention :math:`\frac{1}{2\eta_t}\|M - \alpha_t M_{t-1}\|^2`:

.. math::

    M_t = \operatorname*{argmin}_M\; \tilde l(M) + \frac{1}{2\eta_t}\|M - \alpha_t M_{t-1}\|^2,
    \qquad o_t = M_t q_t,

with :math:`\tilde l` the Huber loss linearised at :math:`M_{t-1}` (``step="explicit"``,
Miras' rule :math:`M_t = \alpha_t M_{t-1} - \eta_t\,\psi(M_{t-1}k_t - v_t)\,k_t^T`,
``psi`` the clip) or the Huber loss itself (``step="implicit"``, closed form
:math:`M_t = C - \eta_t\,\psi\big(r_0/(1+\eta_t\|k_t\|^2)\big) k_t^T`, ``C = alpha_t M_{t-1}``,
``r_0 = C k_t - v_t``). ``delta`` is a constant threshold here (Miras also
makes it data-dependent; pass a different model for that). Both steps are
also solved iteratively (:func:`refmem.level.solve` with ``method="iterative"``).

For ``delta -> infinity`` the Huber bias is the l2 bias: Yaad with ``alpha = 1``
is the delta rule with ``beta = eta`` (a ``refmem verify`` check).

:func:`yaad_deep_recurrent` is Yaad on the residual-MLP memory of
:mod:`refmem.memories.deep_memory` (per-coordinate Huber; the forget gate on
both weight matrices); its implicit step is iterative only.
"""

from __future__ import annotations

from ..level import Level
from ..objectives.huber import Huber
from ..retentions import ForgetGate
from ..validation import finite_outputs
from ._inputs import check_forget_and_step, check_sequence, initial, random_inputs
from ._level_scan import level_scan
from .deep_memory import deep_scan
from .residual_mlp import ResidualLoss


def yaad_level(alpha, eta, *, delta=1.0, mode="coordinate", step="explicit"):
    """One Yaad step as a level: Huber bias, forget-gate retention, linearised at ``M_{t-1}`` when explicit."""
    return Level(Huber(delta=delta, mode=mode), ForgetGate(eta=eta, alpha=alpha), step=step, name="yaad")


@finite_outputs
def yaad_recurrent(q, k, v, alpha, eta, *, delta=1.0, mode="coordinate", step="explicit", method="closed",
                   initial_state=None):
    """Recurrent Yaad with a linear memory.

    Parameters
    ----------
    q, k : array ``[..., T, d_k]``
    v : array ``[..., T, d_v]``
    alpha : array ``[..., T]``
        Forget gates in ``[0, 1]``.
    eta : array ``[..., T]``
        Step sizes ``> 0``.
    delta : float
        Huber threshold ``> 0``.
    mode : {"coordinate", "norm"}
    step : {"explicit", "implicit"}
    method : {"closed", "iterative"}
    initial_state : array ``[..., d_v, d_k]``, optional (zeros)

    Returns
    -------
    o : array ``[..., T, d_v]``, M : array ``[..., d_v, d_k]``
    """
    xp = check_sequence(q, k, v, initial_state, alpha=alpha, eta=eta)
    check_forget_and_step(alpha, eta, k, xp)

    def level_at(t):
        return yaad_level(alpha[..., t], eta[..., t], delta=delta, mode=mode, step=step)

    return level_scan(q, k, v, level_at, initial(initial_state, k, v, xp), xp, method=method)


@finite_outputs
def yaad_deep_recurrent(q, k, v, alpha, eta, *, delta=1.0, step="explicit", method="closed", initial_state=None,
                        hidden=None, activation="tanh"):
    """Yaad on the deep memory ``M(x) = x + W1 sigma(W2 x)`` (``d_k = d_v``); returns ``(o, (W1, W2))``.

    Per-coordinate Huber on ``M(k) - v``; the forget gate on each weight matrix.
    """
    xp = check_sequence(q, k, v, alpha=alpha, eta=eta)
    check_forget_and_step(alpha, eta, k, xp)
    loss = ResidualLoss("huber", delta=delta)

    def retention_at(t):
        return ForgetGate(eta=eta[..., t], alpha=alpha[..., t])

    return deep_scan(q, k, v, retention_at, initial_state=initial_state, hidden=hidden, loss=loss, step=step,
                     method=method, activation=activation)


def make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64"):
    """Random valid inputs (``q, k, v`` and the gates) in the registry's signature (:class:`~refmem.memories.MemorySpec`)."""
    return random_inputs(seed, batch, T, d_k, d_v, xp, dtype, alpha=(0.8, 1.0), eta=(0.05, 0.9))
