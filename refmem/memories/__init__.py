"""Sequence memories: one level each, scanned over a sequence (MATH.md 5).

Every memory module defines a recurrent scan ``name_recurrent(q, k, v, ...,
initial_state=None) -> (o, M_T)`` over inputs ``[..., T, d]`` (any leading
batch/head dims) and registers a :class:`MemorySpec` in :data:`MEMORIES`.
The registry is what the tests, ``refmem verify``, ``refmem bench``, the test
vectors and the GPU agreement tests iterate over, so a memory added here is
covered everywhere without new test code.

Conventions (MATH.md 0): state ``M [..., d_v, d_k]``; read-out
``o_t = M_t q_t`` with ``M_t`` the state *after* the update with token ``t``;
no scale is applied to ``q`` (adapters for other layouts add it).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class MemorySpec:
    """A registered sequence memory.

    Attributes
    ----------
    name : str
        Registry name, also the name of its spec file in ``specs/``.
    recurrent : callable
        ``recurrent(q, k, v, **gates, initial_state=None) -> (o, M_T)``.
    gates : tuple of str
        Names of the extra per-step inputs (keyword arguments), e.g. ``("beta",)``.
    make_inputs : callable
        ``make_inputs(seed, batch, T, d_k, d_v, xp, dtype) -> dict`` of valid
        random inputs (``q, k, v`` and the gates) for tests and benchmarks.
    chunked, minibatch : callable or None
        Chunked (exact) and mini-batch forms, same signature plus ``chunk_size``.
    step_level : callable or None
        ``step_level(**gates_at_t) -> Level``: the level one step of the scan
        solves (for closed == iterative per step).
    description : str
    """

    name: str
    recurrent: Callable
    gates: tuple = ()
    make_inputs: Callable | None = None
    chunked: Callable | None = None
    minibatch: Callable | None = None
    step_level: Callable | None = None
    description: str = ""
    extra: dict = field(default_factory=dict)


MEMORIES: dict[str, MemorySpec] = {}


def register_memory(spec: MemorySpec) -> MemorySpec:
    if spec.name in MEMORIES:
        raise ValueError(f"memory {spec.name!r} registered twice")
    MEMORIES[spec.name] = spec
    return spec


def attach(name: str, **forms) -> None:
    """Add forms (e.g. ``chunked=...``) to a registered memory, from another module."""
    import dataclasses

    MEMORIES[name] = dataclasses.replace(MEMORIES[name], **forms)


def load_all() -> dict[str, MemorySpec]:
    """Import every module of this package (and of ``refmem.chunked`` if present); return the registry."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    try:
        chunked = importlib.import_module("refmem.chunked")
    except ModuleNotFoundError as exc:
        if exc.name != "refmem.chunked":
            raise
    else:
        for info in pkgutil.iter_modules(chunked.__path__):
            importlib.import_module(f"refmem.chunked.{info.name}")
    return MEMORIES
