"""Registries as explicit tables: rows written out one by one, keyed by their ``name``."""

from __future__ import annotations


def table_by_name(what: str, *rows) -> dict:
    """``{row.name: row}`` in the order written; a name written twice is a ``ValueError`` naming ``what``.

    Examples
    --------
    >>> from collections import namedtuple
    >>> Row = namedtuple("Row", "name size")
    >>> table_by_name("shape", Row("square", 4), Row("line", 2))
    {'square': Row(name='square', size=4), 'line': Row(name='line', size=2)}
    """
    names = [row.name for row in rows]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"a {what} is registered twice: {twice}")
    return {row.name: row for row in rows}
