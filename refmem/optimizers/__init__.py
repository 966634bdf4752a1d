"""Optimisers are memories too (NL 2.3, NLx 4, MATH.md 2 and 6).

Each module states one optimiser as a level (or a stack of levels) of
associative memory and solves it with :func:`refmem.level.solve`:

- :mod:`.local_surprise`: gradient descent on a one-layer MLP is a memory of
  local surprise (NL-2..6);
- :mod:`.momentum`: momentum is a two-level memory (NL-7..11, NLx-10..13).
"""

from . import local_surprise, momentum

__all__ = ["local_surprise", "momentum"]
