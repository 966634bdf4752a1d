r"""Declaring a nested system: levels, their context flows and update periods, and the level order (Nested Learning, NLx Definition 2; MATH.md 7a).

A *nested system* is a set of components, each an associative memory with
its own state, **context flow** (what it reads) and **update frequency**
(NLx Definition 2, MATH.md 7). A component is declared with
:class:`NestedLevel`:

- ``period``: ``1`` (every step), an int ``C >= 1`` (every ``C`` steps: at the
  steps ``t`` with ``t = 0 mod C``, counting steps from 1), ``TOKEN``
  (every token: attention, frequency :math:`\infty`) or ``FROZEN`` (never:
  a frozen block, frequency 0). Frequency is ``1 / C`` updates per step.
- ``reads``: the context flow, names of

  - ``"data"``: the step's sample;
  - ``"X"``: component ``X``'s value *at this step* (after ``X``'s update of
    this step, if it has one): a same-step dependency;
  - ``"X@prev"``: component ``X``'s value at the start of the step (before
    any update of this step): no ordering constraint;
  - a :class:`Signal`: a derived quantity (a gradient, a surprise, an
    output) computed from its own reads when asked for.

- ``accumulate``: reads that the component receives summed over its chunk
  (the ``C`` steps since its last update; the continuum memory system's
  "sum of the error terms over the chunk").

The **level order** (Definition 2): ``A`` is faster than ``B`` if
:math:`f_A > f_B`, or if :math:`f_A = f_B` and ``B`` at step ``t`` needs ``A``
at step ``t``; same frequency and no dependency is the same level. Levels
are numbered from 1 (fastest). :func:`level_order` derives it from the
declaration and rejects

- a cycle of same-step reads among components of one frequency (``A`` needs
  ``B`` needs ``A`` at the same step: no order exists);
- a contradiction: a component reading the same-step value of a *slower*
  one (the frequencies put the reader first, the dependency puts it
  second; read ``X@prev`` instead);
- unknown or duplicate names, bad periods, accumulation on a level without a
  chunk, a frozen component with an update rule or reads.

:func:`diagram` prints the system as a small text diagram (levels from the
fastest, frequencies, same-step arrows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

TOKEN = "token"  # updates with every token: attention's infinite frequency
FROZEN = "never"  # never updates: a frozen block, frequency 0
PREV = "@prev"  # suffix: a component's value at the start of the step
DATA = "data"


class NestedSystemError(ValueError):
    """A declaration that admits no level order (cycle, contradiction) or is malformed."""


@dataclass(frozen=True)
class NestedLevel:
    """One component of a nested system.

    Parameters
    ----------
    name : str
    update : callable ``update(value, ctx) -> new value``, or None for a frozen component
        ``ctx`` maps every name in ``reads`` to its value (accumulated reads:
        their sum over the chunk).
    reads : tuple of str
        The context flow (see the module notes).
    period : int, ``TOKEN`` or ``FROZEN``
    accumulate : tuple of str
        Reads received as their sum over the component's chunk (a subset of ``reads``).
    description : str
        A short label for :func:`diagram`.
    """

    name: str
    update: Callable | None
    reads: tuple = ()
    period: int | str = 1
    accumulate: tuple = ()
    description: str = ""

    @property
    def frequency(self) -> float:
        """Updates per step: ``1/C``, ``inf`` for ``TOKEN``, ``0`` for ``FROZEN``."""
        if self.period == TOKEN:
            return math.inf
        if self.period == FROZEN:
            return 0.0
        return 1.0 / self.period

    def updates_at(self, t: int) -> bool:
        """Whether the component updates at step ``t`` (steps count from 1)."""
        if self.period == FROZEN:
            return False
        if self.period == TOKEN:
            return True
        return t % self.period == 0

    @property
    def period_label(self) -> str:
        if self.period == TOKEN:
            return "every token (f = inf)"
        if self.period == FROZEN:
            return "never (frozen, f = 0)"
        return "every step" if self.period == 1 else f"every {self.period} steps"


@dataclass(frozen=True)
class Signal:
    """A derived quantity of the context flow: ``compute(ctx)`` from ``reads`` (a gradient, an output, ...).

    Signals have no state and no frequency; they are computed when a
    component (or another signal) reads them, from the values current at
    that moment.
    """

    name: str
    compute: Callable
    reads: tuple = ()
    description: str = ""


@dataclass(frozen=True)
class NestedSystem:
    """A declared nested system; :attr:`order` and :attr:`level_of` are derived (Definition 2) on construction.

    Parameters
    ----------
    name : str
    levels : tuple of NestedLevel
    signals : tuple of Signal

    Raises
    ------
    NestedSystemError
        The declaration has no level order or is malformed (see the module notes).
    """

    name: str
    levels: tuple
    signals: tuple = ()
    order: tuple = field(init=False, repr=False)
    level_of: dict = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "levels", tuple(self.levels))
        object.__setattr__(self, "signals", tuple(self.signals))
        order, level_of = level_order(self.levels, self.signals)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "level_of", level_of)

    def component(self, name: str) -> NestedLevel:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise KeyError(f"no component named {name!r} in nested system {self.name!r}")

    def signal(self, name: str) -> Signal:
        for s in self.signals:
            if s.name == name:
                return s
        raise KeyError(f"no signal named {name!r} in nested system {self.name!r}")

    @property
    def n_levels(self) -> int:
        return max(self.level_of.values()) if self.level_of else 0

    def diagram(self) -> str:
        return diagram(self)


def _check_declaration(levels, signals):
    if not levels:
        raise NestedSystemError("a nested system needs at least one level")
    names = {}
    for obj in tuple(levels) + tuple(signals):
        if not isinstance(obj, (NestedLevel, Signal)):
            raise TypeError(f"levels must be NestedLevel and signals Signal instances; got {type(obj).__name__}")
        if not isinstance(obj.name, str) or not obj.name or obj.name == DATA or PREV in obj.name:
            raise NestedSystemError(f"a name must be a non-empty str other than {DATA!r} without {PREV!r}; got {obj.name!r}")
        if obj.name in names:
            raise NestedSystemError(f"name {obj.name!r} is declared twice")
        names[obj.name] = obj
        if isinstance(obj.reads, str) or not isinstance(obj.reads, tuple):
            raise TypeError(f"{obj.name}: reads must be a tuple of names; got {obj.reads!r}")
    for lv in levels:
        p = lv.period
        if p not in (TOKEN, FROZEN) and not (isinstance(p, int) and not isinstance(p, bool) and p >= 1):
            raise NestedSystemError(f"{lv.name}: period must be an int >= 1, {TOKEN!r} or {FROZEN!r}; got {p!r}")
        if p == FROZEN and (lv.update is not None or lv.reads):
            raise NestedSystemError(f"{lv.name}: a frozen component (period {FROZEN!r}) has no update rule and reads nothing")
        if p != FROZEN and not callable(lv.update):
            raise NestedSystemError(f"{lv.name}: update must be callable (update(value, ctx) -> value); got {lv.update!r}")
        if not isinstance(lv.accumulate, tuple) or not set(lv.accumulate) <= set(lv.reads):
            raise NestedSystemError(f"{lv.name}: accumulate must be a tuple of names among its reads {lv.reads}; got {lv.accumulate!r}")
        if lv.accumulate and p in (TOKEN, FROZEN):
            raise NestedSystemError(f"{lv.name}: only a component with a period C accumulates over its chunk; period is {p!r}")
    level_names = {lv.name for lv in levels}
    for obj in tuple(levels) + tuple(signals):
        for r in obj.reads:
            if not isinstance(r, str):
                raise TypeError(f"{obj.name}: every read must be a str; got {r!r}")
            if r == DATA:
                continue
            if r.endswith(PREV):
                if r[: -len(PREV)] not in level_names:
                    raise NestedSystemError(f"{obj.name} reads {r!r}, but {r[:-len(PREV)]!r} is not a declared level "
                                            f"(only levels have a previous value)")
                continue
            if r not in names:
                raise NestedSystemError(f"{obj.name} reads {r!r}, which is neither {DATA!r}, a level, "
                                        f"a level's '@prev' value nor a signal; declared: {sorted(names)}")
    return names


def same_step_needs(name, names, _stack=()):
    """The levels whose value *at this step* component/signal ``name`` needs (through signals): a set of names."""
    obj = names[name]
    out = set()
    for r in obj.reads:
        if r == DATA or r.endswith(PREV):
            continue
        target = names[r]
        if isinstance(target, NestedLevel):
            out.add(r)
        else:
            if r in _stack:
                cycle = " -> ".join(_stack[_stack.index(r):] + (r,))
                raise NestedSystemError(f"signals read each other in a cycle: {cycle}")
            out |= same_step_needs(r, names, _stack + (r,))
    return out


def level_order(levels, signals=()):
    """The update order within a step and the level number of every component (Definition 2).

    Returns
    -------
    order : tuple of str
        Component names, fastest first; within one frequency, a component
        comes after every component it needs at the same step.
    level_of : dict str -> int
        Level numbers from 1 (fastest); same frequency and no dependency path
        between them: same number.

    Raises
    ------
    NestedSystemError
        Cycle, contradiction or malformed declaration, with a message naming the components.
    """
    names = _check_declaration(levels, signals)
    needs = {lv.name: same_step_needs(lv.name, names, (lv.name,)) for lv in levels}
    freq = {lv.name: lv.frequency for lv in levels}
    for lv in levels:
        if lv.name in needs[lv.name] and lv.period != FROZEN:
            raise NestedSystemError(f"cycle: {lv.name} reads its own value at the same step; read '{lv.name}{PREV}' "
                                    f"(its value before the step) instead")
        for other in sorted(needs[lv.name]):
            if freq[other] < freq[lv.name] and freq[other] > 0:
                raise NestedSystemError(
                    f"contradiction: {lv.name} ({lv.period_label}) reads the same-step value of {other} "
                    f"({names[other].period_label}), which is slower; Definition 2 updates {lv.name} first, so it "
                    f"cannot see {other}'s update of that step: read '{other}{PREV}' or give them one frequency")
    # depth within a frequency group: longest chain of same-step dependencies (cycle -> error)
    depth = {}

    def depth_of(n, stack):
        if n in depth:
            return depth[n]
        if n in stack:
            cycle = " -> ".join(stack[stack.index(n):] + (n,))
            raise NestedSystemError(f"cycle of same-step reads among components of one frequency: {cycle} "
                                    f"(no order updates each after the ones it needs; read one of them '@prev')")
        ups = [m for m in needs[n] if freq[m] == freq[n] and names[m].period != FROZEN]
        depth[n] = 0 if not ups else 1 + max(depth_of(m, stack + (n,)) for m in ups)
        return depth[n]

    for lv in levels:
        depth_of(lv.name, ())
    index = {lv.name: i for i, lv in enumerate(levels)}
    key = {n: (-freq[n], depth[n]) for n in freq}
    order = tuple(sorted(freq, key=lambda n: (key[n], index[n])))
    distinct = sorted(set(key.values()))
    level_of = {n: 1 + distinct.index(key[n]) for n in order}
    return order, level_of


def _describe_reads(obj, names):
    parts = []
    for r in obj.reads:
        if r == DATA:
            parts.append("data")
        elif r.endswith(PREV):
            parts.append(f"{r[:-len(PREV)]} (previous step)")
        elif isinstance(names[r], Signal):
            parts.append(f"{r}({_describe_reads(names[r], names)})")
        else:
            parts.append(r)
    return ", ".join(parts)


def diagram(system: NestedSystem) -> str:
    """A small text diagram: one block per level (fastest first), its components, frequencies, reads, and arrows.

    An arrow ``A --> B`` means ``B`` reads ``A``'s value of the same step (so
    ``A`` updates first); reads of a previous step's value are listed, not drawn.
    """
    names = {o.name: o for o in system.levels + system.signals}
    lines = [f"{system.name}: {len(system.levels)} components in {system.n_levels} levels (level 1 is the fastest)"]
    by_level = {}
    for n in system.order:
        by_level.setdefault(system.level_of[n], []).append(n)
    for number in sorted(by_level):
        members = by_level[number]
        if number > 1:
            arrows = sorted({f"{m} --> {n}" for n in members for m in
                             same_step_needs(n, names, (n,)) if m != n})
            lines.append("    |")
            lines.append("    v   " + ("; ".join(arrows) if arrows else "(no same-step read)"))
        for n in members:
            lv = names[n]
            extra = f"  [{lv.description}]" if lv.description else ""
            acc = f"; summed over its chunk: {', '.join(lv.accumulate)}" if lv.accumulate else ""
            reads = _describe_reads(lv, names) or "nothing"
            lines.append(f"level {number}  {n:<6} {lv.period_label:<16} reads: {reads}{acc}{extra}")
    return "\n".join(lines)


__all__ = ["DATA", "FROZEN", "PREV", "TOKEN", "NestedLevel", "NestedSystem", "NestedSystemError", "Signal",
           "diagram", "level_order", "same_step_needs"]
