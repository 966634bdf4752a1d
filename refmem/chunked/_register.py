"""Attach chunked / mini-batch forms to a memory once its recurrent module is registered."""

from __future__ import annotations

import importlib

from ..memories import MEMORIES, attach


def attach_forms(name: str, **forms) -> bool:
    """Import ``refmem.memories.<name>`` and attach ``forms``; ``False`` if that memory does not exist (yet)."""
    if name not in MEMORIES:
        try:
            importlib.import_module(f"refmem.memories.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"refmem.memories.{name}":
                raise
            return False
    if name not in MEMORIES:
        return False
    attach(name, **forms)
    return True
