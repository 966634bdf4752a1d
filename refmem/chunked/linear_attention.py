r"""Chunked linear attention (Katharopoulos et al., "Transformers are RNNs"; MATH.md 8, first bullet).

.. math::

    O = Q M_0^T + \mathrm{tril}(Q K^T) V, \qquad M_C = M_0 + V^T K

per chunk (rows of ``Q, K, V`` are the chunk's steps; ``M`` is ``[d_v, d_k]``).
"""

from __future__ import annotations

from ..memories._inputs import check_sequence, initial
from ..parallel import workers_option
from ..validation import finite_outputs
from .chunks import check_chunk_size
from .linear_family import linear_family


@workers_option
@finite_outputs
def linear_attention_chunked(q, k, v, *, chunk_size=64, initial_state=None):
    """Linear attention in chunks of ``chunk_size`` steps; equals :func:`~refmem.memories.linear_attention.linear_attention_recurrent`.

    Parameters and returns are those of the recurrent form, plus ``chunk_size >= 1``
    (any ``T``: the last chunk is padded with steps that write nothing).
    """
    xp = check_sequence(q, k, v, initial_state)
    C = check_chunk_size(chunk_size, k.shape[-2])
    return linear_family(q, k, v, None, C, initial(initial_state, k, v, xp), xp)
