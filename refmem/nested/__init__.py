"""Nested systems: levels with update frequencies and context flows (NLx Definition 2, MATH.md 7).

- :mod:`.system`: declaring components (:class:`NestedLevel`, :class:`Signal`,
  :class:`NestedSystem`), the level order of Definition 2, the text diagram;
- :mod:`.runner`: running a declared system step by step;
- :mod:`.momentum_mlp`: momentum SGD on a small MLP as a two-level system;
- :mod:`.optimizer_systems`: Adam / AdamW declared as nested systems;
- :mod:`.cms`: the continuum memory system (NL-30, 31; NLx-70..74);
- :mod:`.self_modifying_titans`: self-modifying Titans (NLx-83..93);
- :mod:`.hope`: the HOPE block (NLx-94..97);
- :mod:`.registry`: :data:`~refmem.nested.registry.NESTED_SYSTEMS`, the table of them all.
"""

from .runner import run
from .system import FROZEN, TOKEN, NestedLevel, NestedSystem, NestedSystemError, Signal, diagram, level_order

__all__ = ["FROZEN", "TOKEN", "NestedLevel", "NestedSystem", "NestedSystemError", "Signal", "diagram", "level_order",
           "run"]
