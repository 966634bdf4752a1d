r"""Gated linear attention: the dot objective under a forget gate (MATH.md 5a).

.. math::

    M_t = \alpha_t M_{t-1} + v_t k_t^T \quad (\alpha_t \text{ scalar}), \qquad
    M_t = M_{t-1}\,\mathrm{diag}(\alpha_t) + v_t k_t^T \quad (\alpha_t \in [0,1]^{d_k}),
    \qquad o_t = M_t q_t .

The scalar gate is RetNet / Mamba2 style; the per-channel gate decays the key
channels (columns of ``M``) as in GLA. One step is the explicit step of the
dot objective with ``eta = 1`` under the forget gate (scalar:
:class:`~refmem.retentions.ForgetGate`, per channel:
:class:`~refmem.retentions.channel_forget_gate.ChannelForgetGate`); with
``alpha = 1`` it is linear attention.
"""

from __future__ import annotations

from ..level import Level
from ..linalg import matvec, outer
from ..objectives import Dot
from ..parallel import workers_option
from ..retentions import ForgetGate
from ..retentions.channel_forget_gate import ChannelForgetGate
from ..validation import finite_outputs
from ._inputs import check_sequence, check_step_gate, initial, random_inputs


@workers_option
@finite_outputs
def gated_linear_attention_recurrent(q, k, v, alpha, *, initial_state=None):
    """Recurrent gated linear attention.

    Parameters
    ----------
    q, k : array ``[..., T, d_k]``
    v : array ``[..., T, d_v]``
    alpha : array ``[..., T]`` or ``[..., T, d_k]``
        Forget gates in ``[0, 1]``: one per step, or one per step and key channel.
    initial_state : array ``[..., d_v, d_k]``, optional (zeros)

    Returns
    -------
    o : array ``[..., T, d_v]``
    M : array ``[..., d_v, d_k]``
        Final state.
    """
    xp = check_sequence(q, k, v, initial_state, alpha=alpha)
    per_channel = check_step_gate(alpha, "alpha", k, xp, channels=k.shape[-1], channel_name="key channel")
    M = initial(initial_state, k, v, xp)
    outs = []
    for t in range(k.shape[-2]):
        if per_channel:
            decayed = M * alpha[..., t, None, :]  # (.., d_v, d_k) * (.., 1, d_k): M diag(alpha_t)
        else:
            decayed = alpha[..., t, None, None] * M  # (.., 1, 1) * (.., d_v, d_k)
        M = decayed + outer(v[..., t, :], k[..., t, :])  # (.., d_v, d_k)
        outs.append(matvec(M, q[..., t, :]))  # (.., d_v, d_k) @ (.., d_k) -> (.., d_v)
    return xp.stack(outs, axis=-2), M  # (.., T, d_v), (.., d_v, d_k)


def gated_linear_attention_level(alpha, *, per_channel=False):
    """One step as a level: dot objective, ``eta = 1``, forget gate ``alpha``, explicit step.

    Parameters
    ----------
    alpha : float or array ``[...]`` (scalar gate) or ``[..., d_k]`` (``per_channel=True``)
    per_channel : bool
        Whether the last axis of ``alpha`` is the key channel.
    """
    gate = ChannelForgetGate(eta=1.0, alpha=alpha) if per_channel else ForgetGate(eta=1.0, alpha=alpha)
    return Level(Dot(), gate, step="explicit", name="gated_linear_attention")


def make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64", *, per_channel=False):
    """Random valid inputs (``q, k, v`` and the gates) in the registry's signature (:class:`~refmem.memories.MemorySpec`)."""
    return random_inputs(seed, batch, T, d_k, d_v, xp, dtype, alpha=(0.8, 1.0, (d_k,) if per_channel else ()))
