"""Chunked (parallel) forms of the sequence memories, and their mini-batch variants (MATH.md 8).

One module per memory defines ``<name>_chunked(q, k, v, <gates>, *, chunk_size=64,
initial_state=None) -> (o, M_T)``, an exact reordering of the recurrent scan into
matrix products over chunks of ``C`` steps; some also define
``<name>_minibatch``, the different computation that takes every gradient in a
chunk at the chunk-start state (TTT / Titans training). The table
:data:`refmem.memories.MEMORIES` lists each form beside its recurrent scan.
"""
