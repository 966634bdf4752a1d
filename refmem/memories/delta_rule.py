r"""The delta rule (DeltaNet): one explicit l2 step per token (MATH.md 5b).

.. math::

    M_t = M_{t-1} - \beta_t (M_{t-1} k_t - v_t) k_t^T, \qquad o_t = M_t q_t .

With unit keys and ``beta in (0, 1)`` this equals the *implicit* l2 step with
``eta = beta / (1 - beta)`` (see :func:`refmem.objectives.sherman_morrison_step`).
"""

from __future__ import annotations

from ..level import Level
from ..linalg import matvec, outer
from ..objectives import L2
from ..parallel import workers_option
from ..retentions import LocalL2
from ..validation import finite_outputs
from ._inputs import check_sequence, check_step_gate, initial, random_inputs


def delta_step(M, k, v, beta, xp):
    """``M - beta (M k - v) k^T``: one explicit l2 step, ``beta [...]``."""
    r = matvec(M, k) - v  # (.., d_v, d_k) @ (.., d_k) -> (.., d_v)
    return M - beta[..., None, None] * outer(r, k)  # (.., d_v, d_k)


@workers_option
@finite_outputs
def delta_rule_recurrent(q, k, v, beta, *, initial_state=None):
    """Recurrent delta rule.

    Parameters
    ----------
    q, k : array ``[..., T, d_k]``
    v : array ``[..., T, d_v]``
    beta : array ``[..., T]``
        Step sizes (writing strengths), ``>= 0``. ``beta ||k||^2 > 2`` diverges.
    initial_state : array ``[..., d_v, d_k]``, optional

    Returns
    -------
    o : array ``[..., T, d_v]``
    M : array ``[..., d_v, d_k]``

    Examples
    --------
    >>> import numpy as np
    >>> from refmem.memories.delta_rule import delta_rule_recurrent
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.standard_normal((2, 5, 4))      # T = 5, d_k = 4
    >>> v = rng.standard_normal((5, 3))            # d_v = 3
    >>> beta = np.full(5, 0.2)
    >>> o, M = delta_rule_recurrent(q, k, v, beta)
    >>> M_ref = np.zeros((3, 4))
    >>> for t in range(5):                         # M_t = M_{t-1} - b_t (M_{t-1} k_t - v_t) k_t^T
    ...     M_ref = M_ref - beta[t] * np.outer(M_ref @ k[t] - v[t], k[t])
    >>> bool(np.allclose(M, M_ref)), bool(np.allclose(o[-1], M_ref @ q[-1]))
    (True, True)
    """
    xp = check_sequence(q, k, v, initial_state, beta=beta)
    check_step_gate(beta, "beta", k, xp, low=0.0, high=None)
    M = initial(initial_state, k, v, xp)
    outs = []
    for t in range(k.shape[-2]):
        M = delta_step(M, k[..., t, :], v[..., t, :], beta[..., t], xp)
        outs.append(matvec(M, q[..., t, :]))  # (.., d_v)
    return xp.stack(outs, axis=-2), M


def delta_rule_level(beta):
    """One delta-rule step as a level: l2 objective, explicit step, ``eta = beta``."""
    return Level(L2(), LocalL2(eta=beta), step="explicit", name="delta_rule")


def make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64"):
    """Random valid inputs (``q, k, v`` and the gates) in the registry's signature (:class:`~refmem.memories.MemorySpec`)."""
    return random_inputs(seed, batch, T, d_k, d_v, xp, dtype, beta=(0.05, 0.95))
