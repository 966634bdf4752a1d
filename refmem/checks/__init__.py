"""The registry of checks that ``refmem verify`` runs.

A check is a function ``check(xp) -> float | tuple[float, float]`` that
builds its problem on namespace ``xp``, computes a quantity that must be
small (an error between two ways of computing the same thing), and returns
it, or ``(max_error, tolerance)`` when the tolerance is derived from the
problem. It is registered with :func:`register_check` under a spec name
(the ``specs/`` file it demonstrates) and a short description.

Every module in this package is imported by :func:`load_all`; a later
capability adds its checks by adding a module here.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Check:
    spec: str
    name: str
    tolerance: float | None
    fn: Callable


CHECKS: list[Check] = []


def register_check(spec: str, name: str, tolerance: float | None = None):
    """Decorator: register ``fn(xp)`` as a check of ``spec`` named ``name``.

    ``tolerance`` is required unless ``fn`` returns ``(max_error, tolerance)``.
    """

    def deco(fn):
        if any(c.spec == spec and c.name == name for c in CHECKS):
            raise ValueError(f"check {spec!r} / {name!r} registered twice")
        CHECKS.append(Check(spec, name, tolerance, fn))
        return fn

    return deco


def load_all() -> list[Check]:
    """Import every check module in this package; return the registry."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return CHECKS
