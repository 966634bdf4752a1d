r"""Linear attention (Katharopoulos et al., "Transformers are RNNs"): the dot objective with ``eta = 1`` (MATH.md 5a).

.. math::

    M_t = M_{t-1} + v_t k_t^T, \qquad o_t = M_t q_t .
"""

from __future__ import annotations

from ..level import Level
from ..linalg import matvec, outer
from ..objectives import Dot
from ..parallel import workers_option
from ..retentions import LocalL2
from ..validation import finite_outputs
from ._inputs import check_sequence, initial, random_qkv


@workers_option
@finite_outputs
def linear_attention_recurrent(q, k, v, *, initial_state=None):
    """Recurrent linear attention.

    Parameters
    ----------
    q, k : array ``[..., T, d_k]``
    v : array ``[..., T, d_v]``
    initial_state : array ``[..., d_v, d_k]``, optional (zeros)

    Returns
    -------
    o : array ``[..., T, d_v]``
        ``o_t = M_t q_t`` with ``M_t`` the state after token ``t``.
    M : array ``[..., d_v, d_k]``
        Final state.

    Examples
    --------
    With orthonormal keys the memory recalls every value: read at ``q_t = k_t``,
    ``o_t = sum_{i<=t} v_i (k_i . k_t) = v_t``.

    >>> import numpy as np
    >>> from refmem.memories.linear_attention import linear_attention_recurrent
    >>> k = np.eye(4)[:3]                          # T = 3 orthonormal keys, d_k = 4
    >>> v = np.arange(6.0).reshape(3, 2)           # d_v = 2
    >>> o, M = linear_attention_recurrent(k, k, v)
    >>> o.shape, M.shape
    ((3, 2), (2, 4))
    >>> bool(np.allclose(o, v)), bool(np.allclose(M, v.T @ k))   # M_T = sum_t v_t k_t^T
    (True, True)
    """
    xp = check_sequence(q, k, v, initial_state)
    M = initial(initial_state, k, v, xp)
    outs = []
    for t in range(k.shape[-2]):
        M = M + outer(v[..., t, :], k[..., t, :])  # (.., d_v, d_k) + (.., d_v) x (.., d_k)
        outs.append(matvec(M, q[..., t, :]))  # (.., d_v, d_k) @ (.., d_k) -> (.., d_v)
    return xp.stack(outs, axis=-2), M  # (.., T, d_v), (.., d_v, d_k)


def linear_attention_level():
    """One step of linear attention as a level: dot objective, local l2 retention, ``eta = 1``."""
    return Level(Dot(), LocalL2(eta=1.0), step="explicit", name="linear_attention")


def make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64"):
    """Random valid inputs (``q, k, v`` and the gates) in the registry's signature (:class:`~refmem.memories.MemorySpec`)."""
    _, inputs, _ = random_qkv(seed, batch, T, d_k, d_v, xp, dtype)
    return inputs
