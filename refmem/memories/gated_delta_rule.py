r"""The gated delta rule (Gated DeltaNet): an explicit l2 step taken at the decayed state (MATH.md 5b).

.. math::

    M_t = a_t M_{t-1} - b_t\,(a_t M_{t-1} k_t - v_t)\,k_t^T, \qquad o_t = M_t q_t .

One step is the level ``Level(L2(), ForgetGate(eta=b_t, alpha=a_t), "explicit",
linearize_at="retained")``: the forget-gate retention
:math:`\frac{1}{2 b}\|M - a M_{t-1}\|^2` with the l2 objective linearised at
the retained state :math:`a M_{t-1}` (not at :math:`M_{t-1}`). The gate is
applied *before* the state is read by :math:`M k` (flash-linear-attention's
convention, where ``g = log a``). ``a = 1`` is the delta rule; ``b = 0`` only
decays.
"""

from __future__ import annotations

from ..level import Level
from ..linalg import matvec, outer
from ..objectives import L2
from ..parallel import workers_option
from ..retentions import ForgetGate
from ..validation import finite_outputs
from ._inputs import check_sequence, check_step_gate, initial, random_inputs


def gated_delta_step(M, k, v, alpha, beta, xp):
    """``a M - b (a M k - v) k^T`` with ``alpha, beta [...]``: one gated delta step."""
    aM = alpha[..., None, None] * M  # (.., 1, 1) * (.., d_v, d_k): the retained state
    r = matvec(aM, k) - v  # (.., d_v, d_k) @ (.., d_k) -> (.., d_v)
    return aM - beta[..., None, None] * outer(r, k)  # (.., d_v, d_k)


@workers_option
@finite_outputs
def gated_delta_rule_recurrent(q, k, v, alpha, beta, *, initial_state=None):
    """Recurrent gated delta rule.

    Parameters
    ----------
    q, k : array ``[..., T, d_k]``
    v : array ``[..., T, d_v]``
    alpha : array ``[..., T]``
        Forget gates ``a_t`` in ``[0, 1]``.
    beta : array ``[..., T]``
        Writing strengths ``b_t >= 0`` (``b ||k||^2 > 2`` diverges, as for the delta rule).
    initial_state : array ``[..., d_v, d_k]``, optional (zeros)

    Returns
    -------
    o : array ``[..., T, d_v]``
    M : array ``[..., d_v, d_k]``
    """
    xp = check_sequence(q, k, v, initial_state, alpha=alpha, beta=beta)
    check_step_gate(alpha, "alpha", k, xp)
    check_step_gate(beta, "beta", k, xp, low=0.0, high=None)
    M = initial(initial_state, k, v, xp)
    outs = []
    for t in range(k.shape[-2]):
        M = gated_delta_step(M, k[..., t, :], v[..., t, :], alpha[..., t], beta[..., t], xp)
        outs.append(matvec(M, q[..., t, :]))  # (.., d_v)
    return xp.stack(outs, axis=-2), M


def gated_delta_rule_level(alpha, beta):
    """One step as a level: l2 objective, forget gate ``(eta=beta, alpha)``, explicit step at ``alpha M``."""
    return Level(L2(), ForgetGate(eta=beta, alpha=alpha), step="explicit", linearize_at="retained",
                 name="gated_delta_rule")


def make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64"):
    """Random valid inputs (``q, k, v`` and the gates) in the registry's signature (:class:`~refmem.memories.MemorySpec`)."""
    return random_inputs(seed, batch, T, d_k, d_v, xp, dtype, alpha=(0.8, 1.0), beta=(0.05, 0.95))
