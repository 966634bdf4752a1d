r"""Longhorn: the implicit (proximal-point) l2 step per token (MATH.md 3, 5b).

.. math::

    M_t = \operatorname*{argmin}_M \tfrac12\|M k_t - v_t\|^2 + \tfrac{1}{2}\sum_i \frac{1}{b_{t,i}}\|M_{i,:} - M_{t-1,i,:}\|^2
        = M_{t-1} - \mathrm{diag}(e_t)\,(M_{t-1} k_t - v_t)\,k_t^T,
    \qquad e_{t,i} = \frac{b_{t,i}}{1 + b_{t,i}\|k_t\|^2}, \qquad o_t = M_t q_t .

``beta`` is one step size per token (``[..., T]``, all rows alike) or one per
token and value channel (``[..., T, d_v]``, as in the original Longhorn).
The per-channel closed form holds because both the l2 objective and the
retention separate over the rows of ``M``: each row is its own
Sherman-Morrison step (:class:`~refmem.retentions.channel_local_l2.ChannelLocalL2`).
The factor on :math:`M_{t-1} k_t` is :math:`1 - e\|k\|^2 = 1/(1 + b\|k\|^2) \in (0, 1]`,
so the scan is stable for every ``beta >= 0``, where the explicit delta rule
diverges once :math:`b\|k\|^2 > 2`.
"""

from __future__ import annotations

from ..level import Level
from ..linalg import matvec, outer, sq_norm
from ..objectives import L2
from ..parallel import workers_option
from ..retentions import LocalL2
from ..retentions.channel_local_l2 import ChannelLocalL2
from ..validation import finite_outputs
from ._inputs import check_sequence, check_value_channel_steps, initial, random_inputs


def longhorn_step(M, k, v, beta, xp):
    """``M - diag(e) (M k - v) k^T``, ``e = beta / (1 + beta ||k||^2)``; ``beta [...]`` or ``[..., d_v]``."""
    kk = sq_norm(k, xp)  # (..,)
    if beta.ndim == k.ndim:  # per value channel: beta (.., d_v)
        e = beta / (1 + beta * kk[..., None])  # (.., d_v)
    else:
        e = (beta / (1 + beta * kk))[..., None]  # (.., 1)
    r = matvec(M, k) - v  # (.., d_v, d_k) @ (.., d_k) -> (.., d_v)
    return M - outer(e * r, k)  # (.., d_v) x (.., d_k) -> (.., d_v, d_k)


@workers_option
@finite_outputs
def longhorn_recurrent(q, k, v, beta, *, initial_state=None):
    """Recurrent Longhorn.

    Parameters
    ----------
    q, k : array ``[..., T, d_k]``
    v : array ``[..., T, d_v]``
    beta : array ``[..., T]`` or ``[..., T, d_v]``
        Step sizes ``>= 0`` (per token, or per token and value channel).
    initial_state : array ``[..., d_v, d_k]``, optional (zeros)

    Returns
    -------
    o : array ``[..., T, d_v]``
    M : array ``[..., d_v, d_k]``
    """
    xp, per_channel = check_longhorn_inputs(q, k, v, beta, initial_state)
    return longhorn_scan(q, k, v, beta, initial(initial_state, k, v, xp), xp, per_channel=per_channel)


def check_longhorn_inputs(q, k, v, beta, initial_state):
    """``q, k, v``, ``initial_state`` and step sizes ``beta >= 0`` per step or per value channel; ``(xp, per_channel)``."""
    xp = check_sequence(q, k, v, initial_state, beta=beta)
    return xp, check_value_channel_steps(beta, k, v, xp)


def longhorn_scan(q, k, v, beta, M, xp, *, per_channel: bool, value=None):
    """Longhorn's scan from ``M`` on checked inputs; returns ``(o, M_T)``.

    ``value(M_{t-1}, k_t, v_t) -> [..., d_v]`` is the value each step writes:
    ``v_t`` itself by default, the layer's own surprise for DGD.
    """
    outs = []
    for t in range(k.shape[-2]):
        b = beta[..., t, :] if per_channel else beta[..., t]
        u = v[..., t, :] if value is None else value(M, k[..., t, :], v[..., t, :])  # (.., d_v)
        M = longhorn_step(M, k[..., t, :], u, b, xp)
        outs.append(matvec(M, q[..., t, :]))  # (.., d_v)
    return xp.stack(outs, axis=-2), M


def longhorn_level(beta, *, per_channel=False):
    """One step as a level: l2 objective, implicit step, step size ``beta`` (``[..., d_v]`` when ``per_channel``)."""
    ret = ChannelLocalL2(eta=beta) if per_channel else LocalL2(eta=beta)
    return Level(L2(), ret, step="implicit", name="longhorn")


def make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64", *, per_channel=False):
    """Random valid inputs (``q, k, v`` and the gates) in the registry's signature (:class:`~refmem.memories.MemorySpec`)."""
    return random_inputs(seed, batch, T, d_k, d_v, xp, dtype, beta=(0.1, 3.0, (d_v,) if per_channel else ()))
