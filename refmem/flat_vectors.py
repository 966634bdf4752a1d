r"""The entry of a reference with the flat calling convention in the test-vector registry.

``refmem vectors`` and ``refmem conform`` call such a reference as
``fn(x, **inputs, **params)``: ``x [..., T, ...]`` is passed first, every
other input is an array or a tuple of arrays (a tuple is stored as ``name.0,
name.1, ...``) and every parameter a number. The first output is stored as
``o`` (shaped like ``x``), the others as ``state`` or ``state_0, state_1,
...`` in the order returned. The nested systems (:mod:`refmem.nested.vector_cases`)
and the optimisers (:mod:`refmem.optimizers.vector_cases`) register their
entry points with this record; :func:`refmem.vectors.registry` merges them
with the memories.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class FlatVectorSpec:
    """A reference with the flat calling convention ``fn(x, **inputs, **params)``, for ``refmem vectors`` and ``conform``.

    The attributes ``refmem.vectors`` reads from a memory's entry: ``recurrent``
    (the reference), ``make_inputs``, ``description``, ``gates`` (none: the
    gate cases do not apply), ``step_gates``, ``make_initial_state``;
    ``positional`` names the input passed first.
    """

    name: str
    recurrent: Callable
    make_inputs: Callable
    description: str
    positional: tuple = ("x",)
    gates: tuple = ()
    step_gates: tuple = ()
    make_initial_state: Callable | None = None


__all__ = ["FlatVectorSpec"]
