r"""Hand-written backward passes (vector-Jacobian products) of the sequence memories.

For a memory ``(o, M_T) = f(q, k, v, gates..., initial_state)`` its VJP
``f_vjp(q, k, v, gates..., do=..., dM_T=None, initial_state=None)`` returns
the gradients of :math:`\langle do, o\rangle + \langle dM_T, M_T\rangle` in every
input, as a dict keyed by the forward's argument names
(:mod:`refmem.backward.cotangents`). The recurrent VJP runs the adjoint
recurrence backward in time; the chunked VJP (same arguments plus
``chunk_size``) is its chunked reordering and returns the same numbers.

They are written against the array API like the forward and are checked
(``tests/test_backward.py``) by central finite differences, by JAX's and
torch's autodiff through refmem's own forward in float64 (where installed),
and chunked against recurrent. The adjoint equations are in each memory's
spec, section "Backward".

Each registered memory names its backward passes in its ``MemorySpec.backward``
(:data:`refmem.memories.MEMORIES`, the one table of what exists);
:func:`refmem.memories.backward_passes` lists them. This package imports the
memory modules it differentiates, never the table (the table imports it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class BackwardSpec:
    """The backward passes of one registered memory (its ``MemorySpec.backward``).

    Attributes
    ----------
    recurrent : callable
        ``recurrent(q, k, v, *gates, do, dM_T=None, initial_state=None) -> dict``.
    chunked : callable or None
        The same plus ``chunk_size``; equal to ``recurrent``.
    minibatch : callable or None
        The backward of the mini-batch form (``MemorySpec.minibatch``, a different
        forward): the same plus ``chunk_size``.
    deep : callable or None
        The backward of the memory on the deep memory (``MemorySpec.deep``); its
        state and ``dM_T`` are the weight pair ``(W1, W2)``.
    """

    recurrent: Callable
    chunked: Callable | None = None
    minibatch: Callable | None = None
    deep: Callable | None = None


#: The forms of a registered memory (``MemorySpec`` fields) and the ``BackwardSpec`` field holding each one's backward.
FORMS = ("recurrent", "chunked", "minibatch", "deep")
