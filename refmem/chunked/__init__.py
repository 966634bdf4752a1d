r"""Chunked (parallel) forms of the sequence memories, and their mini-batch variants (MATH.md 8).

One module per memory defines ``<name>_chunked(q, k, v, <gates>, *, chunk_size=64,
initial_state=None) -> (o, M_T)``, an exact reordering of the recurrent scan into
matrix products over chunks of ``C`` steps; some also define
``<name>_minibatch``, the different computation that takes every gradient in a
chunk at the chunk-start state (TTT / Titans training).

The linear and delta families (and Titans, on the pair ``[M, S]``) reduce one chunk of ``C`` steps, started from state
``M0 [..., d_v, d_k]``, to

.. math::

    O = P_U + \tilde Q M_0^T, \qquad M_C = \mathrm{step}(M_0),

where ``P_U [..., C, d_v]`` and ``Q~ [..., C, d_k]`` do not depend on ``M0`` and
``step`` is affine in ``M0``. The sequence is taken a block of chunks at a time
(:func:`~refmem.chunked.chunks.scan_blocks`, a block is at most an eighth or a
sixteenth of it): everything in a block that does not depend on ``M0`` is computed
for its chunks at once (batched matrix products), then the chunk-to-chunk pass,
the only sequential part, a few small matrix products per chunk, carries only
the current state (no per-step history). Temporaries are sized by the block, so
a form's peak extra memory stays a small multiple of its outputs. The table
:data:`refmem.memories.MEMORIES` lists each form beside its recurrent scan.
"""
