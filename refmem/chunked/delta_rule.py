r"""Chunked delta rule (WY / UT form, MATH.md 8) and its mini-batch variant.

Exact form: per chunk, :math:`A = I + \mathrm{strict\_tril}(\mathrm{diag}(\beta) K K^T)`,
:math:`U = A^{-1}\mathrm{diag}(\beta)(V - K M_0^T)`,
:math:`O = Q M_0^T + \mathrm{tril}(Q K^T) U`, :math:`M_C = M_0 + U^T K`
(:func:`refmem.chunked.delta_family.delta_terms` with no gate).

Mini-batch form (TTT): every gradient of the chunk at the chunk-start state,
:math:`M_t = M_0 - \sum_{s \le t} \beta_s (M_0 k_s - v_s) k_s^T`: the same
formulas with :math:`A = I`. It equals the recurrence only for ``C = 1``.
"""

from __future__ import annotations

from ..memories._inputs import check_sequence, check_step_gate, initial
from ..parallel import workers_option
from ..validation import finite_outputs
from .chunks import check_chunk_size
from .delta_family import delta_family


def _checked(q, k, v, beta, initial_state, chunk_size):
    xp = check_sequence(q, k, v, initial_state, beta=beta)
    check_step_gate(beta, "beta", k, xp, low=0.0, high=None)
    return xp, check_chunk_size(chunk_size, k.shape[-2])


@workers_option
@finite_outputs
def delta_rule_chunked(q, k, v, beta, *, chunk_size=64, initial_state=None):
    """The delta rule in chunks (exact); equals :func:`~refmem.memories.delta_rule.delta_rule_recurrent`.

    Parameters and returns are those of the recurrent form, plus
    ``chunk_size >= 1`` (any ``T``: the last chunk is padded with steps that write nothing).

    Examples
    --------
    >>> import numpy as np
    >>> from refmem.chunked.delta_rule import delta_rule_chunked
    >>> from refmem.memories.delta_rule import delta_rule_recurrent
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.standard_normal((3, 2, 10, 4))   # 2 sequences, T = 10, d_k = d_v = 4
    >>> beta = rng.uniform(0.1, 0.4, (2, 10))
    >>> o_c, M_c = delta_rule_chunked(q, k, v, beta, chunk_size=4)   # chunks of 4, 4 and 2
    >>> o_r, M_r = delta_rule_recurrent(q, k, v, beta)
    >>> bool(np.allclose(o_c, o_r)), bool(np.allclose(M_c, M_r))
    (True, True)
    """
    xp, C = _checked(q, k, v, beta, initial_state, chunk_size)
    return delta_family(q, k, v, beta, None, C, initial(initial_state, k, v, xp), xp, exact=True)


@workers_option
@finite_outputs
def delta_rule_minibatch(q, k, v, beta, *, chunk_size=64, initial_state=None):
    """Mini-batch delta rule: every gradient in a chunk taken at the chunk-start state.

    A different computation from the recurrence unless ``chunk_size == 1``.
    Same parameters and returns as :func:`delta_rule_chunked`.
    """
    xp, C = _checked(q, k, v, beta, initial_state, chunk_size)
    return delta_family(q, k, v, beta, None, C, initial(initial_state, k, v, xp), xp, exact=False)
