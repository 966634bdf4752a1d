"""The project's guard against bad input: every public entry point, every kind of bad argument.

Each registered memory form (recurrent, chunked, mini-batch, deep), each level of the
objective x retention x step x method tables, each optimiser of ``OPTIMIZERS`` and each
loss is called with one argument mutated (``MUTATIONS``: None, lists, numbers, wrong rank
and shape, empty axes, nan / inf, 1e+-300, negative and huge values, ints, bools, complex,
float16, float32 among float64, big-endian, non-contiguous and broadcast views, an array
of another backend). The call must either

- raise ``ValueError`` / ``TypeError`` whose message names the mutated argument
  (a documented refmem error, ``DivergenceError`` or ``ConvergenceError``, is also
  allowed for mutations that keep the input valid but extreme), or
- return finite arrays,

and never emit a warning. ``make test`` runs every (entry point, argument, mutation)
once (a deterministic sweep; the count is printed by ``test_sweep_size``) plus the
hypothesis tests below in the ``ci`` profile; ``make fuzz`` runs the hypothesis tests
in the ``dev`` profile with random details (which entry of an array, which scale).
"""

from __future__ import annotations

import inspect
import math
import warnings

import array_api_strict
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refmem.memories import MEMORIES
from refmem.solvers import ConvergenceError
from refmem.validation import DivergenceError

# ----------------------------------------------------------------------------- mutations
#
# kind: "reject"  -> ValueError / TypeError naming the argument
#       "accept"  -> a finite result (DivergenceError only if the valid input diverges: never here)
#       "extreme" -> a finite result, or ValueError / TypeError naming the argument, or a
#                    documented numerical error (DivergenceError, ConvergenceError)


def _scaled(x, s):
    return x * s


def _with_entry(x, value, where=0):
    y = np.array(x, copy=True)
    if y.size:
        y.reshape(-1)[where % y.size] = value
    return y


def _non_contiguous(x):
    x = np.asarray(x)
    wide = np.repeat(x[..., None], 2, axis=-1)  # (.., 2)
    return wide[..., 0]  # the same values, strided


def _broadcast_view(x):
    x = np.asarray(x)
    if x.ndim == 0:
        return x
    return np.broadcast_to(x[:1], x.shape) if x.shape[0] == 1 else np.broadcast_to(x, x.shape)


MUTATIONS = {
    # name: (kind, function of the valid NumPy value (and a hypothesis detail))
    "None": ("reject", lambda x, d: None),
    "list": ("reject", lambda x, d: np.asarray(x).tolist()),
    "string": ("reject", lambda x, d: "x"),
    "drop_last_axis": ("reject", lambda x, d: np.asarray(x)[..., 0] if np.ndim(x) else np.ones(2)),
    "extra_axis": ("reject", lambda x, d: np.stack([np.asarray(x)] * 2, axis=-1)),
    "empty_last_axis": ("reject", lambda x, d: np.asarray(x)[..., :0] if np.ndim(x) else np.ones(0)),
    "empty_first_axis": ("reject", lambda x, d: np.asarray(x)[:0] if np.ndim(x) else np.ones(0)),
    "nan": ("reject", lambda x, d: _with_entry(x, np.nan, d)),
    "inf": ("reject", lambda x, d: _with_entry(x, -np.inf, d)),
    "int": ("reject", lambda x, d: np.ones(np.shape(x), dtype=np.int64)),
    "bool": ("reject", lambda x, d: np.ones(np.shape(x), dtype=bool)),
    "complex": ("reject", lambda x, d: np.asarray(x) + 0j),
    "float16": ("reject", lambda x, d: np.asarray(x).astype(np.float16)),
    "float32_among_float64": ("reject", lambda x, d: np.asarray(x).astype(np.float32)),
    "other_backend": ("reject", lambda x, d: array_api_strict.asarray(np.asarray(x))),
    "big_endian": ("accept", lambda x, d: np.asarray(x).astype(">f8")),
    "non_contiguous": ("accept", lambda x, d: _non_contiguous(x)),
    "broadcast_view": ("accept", lambda x, d: _broadcast_view(x)),
    "huge_1e300": ("extreme", lambda x, d: _scaled(np.asarray(x), 1e300)),
    "tiny_1e-300": ("extreme", lambda x, d: _scaled(np.asarray(x), 1e-300)),
    "huge_1e6": ("extreme", lambda x, d: _scaled(np.asarray(x), 1e6)),
    "negative": ("extreme", lambda x, d: -np.asarray(x)),
    "zero": ("extreme", lambda x, d: np.zeros_like(np.asarray(x))),
    "above_one": ("extreme", lambda x, d: np.asarray(x) + 1.5),
}

# A Python-number argument (a window length, a step size given as a number) gets these instead.
SCALAR_MUTATIONS = {
    "None": ("reject", lambda x, d: None),
    "string": ("reject", lambda x, d: "1"),
    "list": ("reject", lambda x, d: [x]),
    "nan": ("reject", lambda x, d: math.nan),
    "inf": ("reject", lambda x, d: math.inf),
    "bool": ("reject", lambda x, d: True),
    "complex": ("reject", lambda x, d: complex(x, 1)),
    "array": ("reject", lambda x, d: np.full((2,), x)),
    "negative": ("extreme", lambda x, d: -x - 1),
    "zero": ("extreme", lambda x, d: 0 * x),
    "huge": ("extreme", lambda x, d: x * 10**9),
    "fraction": ("extreme", lambda x, d: x + 0.5),
}

NUMERICAL_ERRORS = (DivergenceError, ConvergenceError)


def _is_array(x):
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _mutations_of(value):
    return SCALAR_MUTATIONS if isinstance(value, (int, float)) and not isinstance(value, bool) else MUTATIONS


def _mutate(value, mutation, detail=0):
    """Apply a mutation to a NumPy array, to the first array of a tuple state, or to a number."""
    _, fn = _mutations_of(value)[mutation]
    if isinstance(value, tuple):
        return (fn(value[0], detail),) + tuple(value[1:])
    return fn(value, detail)


def _finite_arrays(out):
    if isinstance(out, (tuple, list)):
        return all(_finite_arrays(o) for o in out)
    if isinstance(out, dict):
        return all(_finite_arrays(o) for o in out.values())
    if _is_array(out):
        a = np.asarray(out) if type(out).__module__.startswith("numpy") else np.from_dlpack(out)
        return not np.issubdtype(a.dtype, np.floating) or bool(np.all(np.isfinite(a)))
    if isinstance(out, float):
        return math.isfinite(out)
    if hasattr(out, "__dict__") and not callable(out):  # a state dataclass
        return all(_finite_arrays(o) for o in vars(out).values())
    return True


def check_call(call, name, mutation, *, optional=False, table=MUTATIONS):
    """Run ``call()``; assert the guard's contract for an argument ``name`` mutated by ``mutation``.

    ``optional``: the argument defaults to None, so None is valid. Returns
    ``"raised"`` or ``"returned"``.
    """
    kind, _ = table[mutation]
    if optional and mutation == "None":
        kind = "accept"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning is a failure (NumPy's RuntimeWarning included)
        try:
            out = call()
        except (ValueError, TypeError) as exc:
            if kind == "accept":
                raise AssertionError(f"{mutation} {name} is valid input, but was refused: {exc}") from exc
            assert type(exc).__module__.startswith("refmem") or type(exc) in (ValueError, TypeError), \
                f"{mutation} {name}: a foreign exception {type(exc).__name__}: {exc}"
            assert name in str(exc), f"{mutation} {name}: the message does not name {name!r}: {exc}"
            return "raised"
        except NUMERICAL_ERRORS as exc:
            assert kind == "extreme", f"{mutation} {name}: {type(exc).__name__} for input that is not extreme: {exc}"
            return "raised"
    assert kind != "reject", f"{mutation} {name}: bad input was accepted"
    assert _finite_arrays(out), f"{mutation} {name}: a non-finite result was returned"
    return "returned"


# ----------------------------------------------------------------------------- memories

T, D_K, D_V = 5, 3, 3  # deep memories map d to d


def _memory_forms():
    forms = []
    for name, spec in MEMORIES.items():
        for form in ("recurrent", "chunked", "minibatch", "deep"):
            if getattr(spec, form, None) is not None:
                forms.append((name, form))
    return forms


MEMORY_FORMS = _memory_forms()


def _memory_inputs(name, form):
    spec = MEMORIES[name]
    inputs = spec.make_inputs(0, (2,), T, D_K, D_V, np)
    inputs = {n: (np.asarray(a) if _is_array(a) else a) for n, a in inputs.items()}
    if spec.make_initial_state is not None and form != "deep":
        inputs["initial_state"] = spec.make_initial_state(1, (2,), D_K, D_V, np)
    elif form != "deep":
        inputs["initial_state"] = np.random.default_rng(1).standard_normal((2, D_V, D_K)) * 0.1
    kwargs = {"chunk_size": 2} if form in ("chunked", "minibatch") else {}
    return getattr(spec, form), inputs, kwargs


# Required arguments for which None is documented as a value: window=None attends to every token.
NONE_IS_DOCUMENTED = {("sliding_window_attention", "window")}


def _optional(fn, argument):
    p = inspect.signature(fn).parameters.get(argument)
    return p is not None and p.default is None


def _memory_call(name, form, argument, mutation, detail=0):
    fn, inputs, kwargs = _memory_inputs(name, form)
    table = _mutations_of(inputs[argument])
    # None for an optional argument is valid; (None, X) for a tuple state is not
    optional = ((_optional(fn, argument) and not isinstance(inputs[argument], tuple))
                or (name, argument) in NONE_IS_DOCUMENTED)
    if mutation not in table:
        return "not applicable"
    inputs[argument] = _mutate(inputs[argument], mutation, detail)
    return check_call(lambda: fn(**inputs, **kwargs), argument, mutation, optional=optional, table=table)


def sweep(calls):
    """Run every ``(label, thunk)``; fail once, listing every call that broke the contract."""
    failures = []
    for label, thunk in calls:
        try:
            thunk()
        except AssertionError as exc:
            failures.append(f"{label}: {exc}")
        except Exception as exc:  # a foreign exception escaped
            failures.append(f"{label}: {type(exc).__name__} escaped: {exc}")
    assert not failures, f"{len(failures)} bad-input calls broke the contract:\n" + "\n".join(failures)


def _memory_arguments(name, form):
    """``[(argument, its mutation table)]``."""
    _, inputs, _ = _memory_inputs(name, form)
    return [(n, _mutations_of(x)) for n, x in inputs.items()]


@pytest.mark.parametrize("name,form", MEMORY_FORMS, ids=[f"{n}-{f}" for n, f in MEMORY_FORMS])
def test_memory_forms_answer_every_bad_argument(name, form):
    """The sweep: every argument of the form x every mutation, once."""
    sweep((f"{mutation} {argument}", lambda a=argument, m=mutation: _memory_call(name, form, a, m))
          for argument, table in _memory_arguments(name, form) for mutation in table)


@pytest.mark.parametrize("name,form", MEMORY_FORMS, ids=[f"{n}-{f}" for n, f in MEMORY_FORMS])
def test_memory_forms_answer_bad_argument_with_random_details(name, form):
    arguments = [a for a, _ in _memory_arguments(name, form)]

    @settings(max_examples=4 if settings().max_examples <= 25 else settings().max_examples)
    @given(st.sampled_from(arguments), st.sampled_from(sorted(MUTATIONS)), st.integers(0, 10**6))
    def run(argument, mutation, detail):
        _memory_call(name, form, argument, mutation, detail)

    run()


@pytest.mark.parametrize("form", ["chunked", "minibatch"])
def test_a_chunk_far_longer_than_the_sequence_is_one_chunk(form):
    """chunk_size = 10**12 with T = 5 is the computation of chunk_size = T (no (C, C) allocation)."""
    for name, spec in MEMORIES.items():
        fn = getattr(spec, form)
        if fn is None:
            continue
        _, inputs, _ = _memory_inputs(name, form)
        o_huge, _ = fn(**inputs, chunk_size=10**12)
        o_T, _ = fn(**inputs, chunk_size=T)
        np.testing.assert_array_equal(np.asarray(o_huge), np.asarray(o_T))


def test_sweep_size(capsys):
    """How many bad-input calls the sweep makes (the figure the guard reports)."""
    n = sum(len(table) for n, f in MEMORY_FORMS for _, table in _memory_arguments(n, f))
    with capsys.disabled():
        print(f"\nbad-input sweep: {len(MEMORY_FORMS)} memory forms, {n} memory calls")
    assert n > 0
