"""Objectives ("attentional biases", Miras; Nested Learning's ``l``) ``l(M; k, v)`` of a linear memory (MATH.md 3).

Each objective is one module; :data:`OBJECTIVES` maps names to classes so a
level can be named in a spec, a test vector or the CLI.
"""

from .base import Objective
from .dot import Dot
from .inner import Inner
from .huber import Huber
from .l2 import L2, sherman_morrison_step
from .lp import Lp

OBJECTIVES: dict[str, type[Objective]] = {"dot": Dot, "inner": Inner, "l2": L2, "lp": Lp, "huber": Huber}

__all__ = ["Objective", "Dot", "Inner", "L2", "Lp", "Huber", "sherman_morrison_step", "OBJECTIVES"]
