"""The registry of checks that ``refmem verify`` runs.

A check is a function ``check(xp) -> float | tuple[float, float]`` that
builds its problem on namespace ``xp``, computes a quantity that must be
small (an error between two ways of computing the same thing), and returns
it, or ``(max_error, tolerance)`` when the tolerance is derived from the
problem. It is registered with :func:`register_check` under a spec name
(the ``specs/`` file it demonstrates) and a short description.

One module per family of specs; :data:`MODULES` at the end of this file
lists them, and importing this package imports each, so :data:`CHECKS` is
complete on import. A new family adds its module to that list
(``tests/test_registry.py`` fails for a check module that is not listed).
"""

from __future__ import annotations

import importlib

from .registry import CHECKS, Check, register_check

# The check modules, one per family of specs, in the order ``refmem verify`` runs them.
MODULES = (
    "core_levels",
    "objectives_retentions",
    "miras_scipy",
    "gd_and_momentum",
    "scan_steps",
    "delta_family",
    "titans",
    "omega",
    "mesa",
    "attention",
    "deep_memory",
    "deep_memory_scipy",
    "miras",
    "chunked",
    "optimizers",
    "nested",
)

for _module in MODULES:
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["CHECKS", "Check", "MODULES", "register_check"]
