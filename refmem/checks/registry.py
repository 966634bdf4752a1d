"""The registered checks: :class:`Check`, the list :data:`CHECKS` and the decorator that fills it.

Check modules import :func:`register_check` from here; :mod:`refmem.checks`
imports every module it lists, so :data:`CHECKS` is complete once that
package is imported.
"""

from __future__ import annotations

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
