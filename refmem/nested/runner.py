r"""Running a declared nested system: every step, every component that is due updates, in the level order (Nested Learning; MATH.md 7a).

At step ``t`` (``t = 1 .. N``, sample ``data[t-1]``) the runner visits the
components in :attr:`NestedSystem.order` (fastest first, Definition 2). A
component that updates at ``t`` (:meth:`NestedLevel.updates_at`) receives its
context ``ctx``:

- ``"data"``: the sample of step ``t``;
- ``"X"``: ``X``'s current value (already updated at step ``t`` if ``X`` comes
  earlier in the order and was due);
- ``"X@prev"``: ``X``'s value at the start of step ``t``;
- a signal: computed now from its own reads.

A component with ``accumulate`` evaluates those reads at *every* step (at
its place in the order) and receives their sum over the ``C`` steps of its
chunk when it updates: steps ``t - C + 1 .. t``, exactly ``C`` terms (the
continuum memory system's sum, MATH.md 7; the printed ``t = i - C .. i`` has
``C + 1``).

``order=`` replaces the derived order. It exists to *demonstrate* what a
wrong order computes (a component reading another that has not yet
updated sees its previous value); the derived order is the only one that
honours the declaration.
"""

from __future__ import annotations

from .system import DATA, PREV, NestedSystem, Signal


def _value(name, system, sample, prev, cur):
    if name == DATA:
        return sample
    if name.endswith(PREV):
        return prev[name[: -len(PREV)]]
    if name in cur:
        return cur[name]
    sig = system.signal(name)
    return _evaluate(sig, system, sample, prev, cur)


def _evaluate(sig: Signal, system, sample, prev, cur):
    ctx = {r: _value(r, system, sample, prev, cur) for r in sig.reads}
    return sig.compute(ctx)


def _add(a, b):
    """``a + b`` for arrays or tuples of arrays (a component's value may be a tuple, e.g. an MLP's ``(W1, W2)``)."""
    if a is None:
        return b
    if isinstance(a, tuple):
        return tuple(_add(x, y) for x, y in zip(a, b))
    return a + b


def run(system: NestedSystem, initial: dict, data, *, order=None, record=True):
    """Run ``system`` over ``data``; return the final state and (``record=True``) the state after every step.

    Parameters
    ----------
    system : NestedSystem
    initial : dict name -> value
        The value of every component before step 1 (arrays or tuples of arrays).
    data : sequence
        ``data[t-1]`` is the sample of step ``t``; ``N = len(data)`` steps.
    order : sequence of str, optional
        Override of the derived order (a demonstration of a wrong order; see the module notes).
    record : bool

    Returns
    -------
    state : dict
        After step ``N``.
    trajectory : list of dict
        ``[state_0, state_1, ..., state_N]`` (empty when ``record=False``).
    """
    if not isinstance(system, NestedSystem):
        raise TypeError(f"system must be a NestedSystem; got {type(system).__name__}")
    if not isinstance(initial, dict):
        raise TypeError(f"initial must be a dict of component values; got {type(initial).__name__}")
    missing = [lv.name for lv in system.levels if lv.name not in initial]
    if missing:
        raise ValueError(f"initial has no value for the component(s) {missing} of {system.name!r}")
    unknown = sorted(set(initial) - {lv.name for lv in system.levels})
    if unknown:
        raise ValueError(f"initial names {unknown}, which are not components of {system.name!r}")
    if order is None:
        order = system.order
    else:
        order = tuple(order)
        if sorted(order) != sorted(system.order):
            raise ValueError(f"order must be a permutation of the components {sorted(system.order)}; got {list(order)}")
    try:
        n_steps = len(data)
    except TypeError:
        raise TypeError(f"data must be a sequence of per-step samples (len and indexing); got {type(data).__name__}") from None
    state = dict(initial)
    trajectory = [state] if record else []
    sums = {lv.name: {r: None for r in lv.accumulate} for lv in system.levels}
    for t in range(1, n_steps + 1):
        sample = data[t - 1]
        prev, cur = state, dict(state)
        for name in order:
            lv = system.component(name)
            due = lv.updates_at(t)
            if lv.accumulate:
                for r in lv.accumulate:  # the chunk's terms, each evaluated at its own step
                    sums[name][r] = _add(sums[name][r], _value(r, system, sample, prev, cur))
            if not due:
                continue
            ctx = {r: (sums[name][r] if r in lv.accumulate else _value(r, system, sample, prev, cur)) for r in lv.reads}
            cur[name] = lv.update(cur[name], ctx)
            sums[name] = {r: None for r in lv.accumulate}
        state = cur
        if record:
            trajectory.append(state)
    return state, trajectory


__all__ = ["run"]
