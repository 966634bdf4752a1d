"""The project's guard against bad input: every public entry point, every kind of bad argument.

Each registered memory form (recurrent, chunked, mini-batch, deep), each level of the
objective x retention x step x method tables, each optimiser of ``OPTIMIZERS`` and each
loss of ``LOSSES`` is called with one argument mutated (``MUTATIONS``: None, lists, numbers, wrong rank
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
import os
import warnings

import array_api_strict
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import BAD_INPUT_CALLS
from refmem.memories import MEMORIES
from refmem.solvers import ConvergenceError, SolveReport
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
    "rank_0": ("reject", lambda x, d: np.asarray(x).reshape(-1)[:1].reshape(())),
    "wrong_last_length": ("reject", lambda x, d: np.concatenate([np.asarray(x), np.asarray(x)[..., :1]], axis=-1)),
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
    "array": ("extreme", lambda x, d: np.full((2,), x)),  # valid where a parameter may be batched
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
    if isinstance(out, SolveReport):  # a report's residual is nan for a closed form: not a result
        return True
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


def _kind(mutation, table=None):
    return (table or (MUTATIONS if mutation in MUTATIONS else SCALAR_MUTATIONS))[mutation][0]


def check_call(call, name, mutation, *, optional=False, table=MUTATIONS):
    """Run ``call()``; assert the guard's contract for an argument ``name`` mutated by ``mutation``.

    ``optional``: the argument defaults to None, so None is valid. Returns
    ``"raised"`` or ``"returned"``.
    """
    kind, _ = table[mutation]
    test = os.environ.get("PYTEST_CURRENT_TEST", "::outside a test").split("::")[-1]
    family = test.split("[")[0].split(" ")[0]  # the test function: one entry family, sweep or random details
    BAD_INPUT_CALLS[family] = BAD_INPUT_CALLS.get(family, 0) + 1
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
# Mutations that give another valid input for these arguments: gamma's length is the window c,
# and Mesa's lam may be one number (a 0-d array is one).
STILL_VALID = {("omega", "gamma"): {"wrong_last_length"}, ("omega_implicit", "gamma"): {"wrong_last_length"},
               ("mesa", "lam"): {"rank_0"}}


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
    if mutation in STILL_VALID.get((name, argument), ()):
        table = dict(table, **{mutation: ("extreme", table[mutation][1])})
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




# ----------------------------------------------------------------------------- levels

from refmem import ClosedFormUnavailable, Level, solve  # noqa: E402
from refmem.objectives import OBJECTIVES  # noqa: E402
from refmem.retentions import RETENTIONS  # noqa: E402

# values for constructor parameters, by name (a required parameter needs one here)
PARAM_VALUES = {"eta": 0.6, "alpha": 0.85, "b": 2.0, "a": 4.0, "c": 1.0, "p": 3.0, "q": 3.0, "delta": 0.8,
                "beta": 0.5, "lam": 0.3, "gamma": 0.5, "theta": 0.5}


def _constructor_values(cls):
    """The keyword arguments the guard builds ``cls`` with: every named parameter it has."""
    kwargs = {}
    for name, par in inspect.signature(cls).parameters.items():
        if par.kind in (par.VAR_POSITIONAL, par.VAR_KEYWORD):
            continue
        if name in PARAM_VALUES:
            kwargs[name] = PARAM_VALUES[name]
        else:
            assert par.default is not par.empty, f"{cls.__name__}: add a value for {name!r} to PARAM_VALUES"
    return kwargs


def _level_inputs(level, simplex):
    g = np.random.default_rng(0)
    M_t = g.standard_normal((2, 2, 3))  # (batch, d_v, d_k)
    if simplex:  # retentions on a scaled simplex need positive rows summing to c = 1
        M_t = np.exp(M_t) / np.exp(M_t).sum(axis=-1, keepdims=True)
    k = g.standard_normal((2, 3)) / np.sqrt(3)
    v = g.standard_normal((2, 2, 3) if level.objective.keyless else (2, 2))
    return {"M_t": M_t, "k": None if level.objective.keyless else k, "v": v}


def _level_cases():
    """Every registered objective x retention x step with the methods it has and inputs it accepts."""
    cases = []
    for oname in sorted(OBJECTIVES):
        for rname in sorted(RETENTIONS):
            for step in ("explicit", "implicit"):
                cases.append((oname, rname, step))
    return cases


def _level(oname, rname, step, **overrides):
    obj_cls, ret_cls = OBJECTIVES[oname], RETENTIONS[rname]
    obj_kwargs = {n: overrides.get(n, v) for n, v in _constructor_values(obj_cls).items()}
    ret_kwargs = {n: overrides.get(n, v) for n, v in _constructor_values(ret_cls).items()}
    return Level(obj_cls(**obj_kwargs), ret_cls(**ret_kwargs), step)


def _valid_level_setup(oname, rname, step):
    """``(level, inputs, methods)``: inputs the level accepts and the methods that solve it."""
    level = _level(oname, rname, step)
    for simplex in (False, True):
        inputs = _level_inputs(level, simplex)
        methods = []
        for method in ("closed", "iterative"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    out, _ = solve(level, method=method, **inputs)
            except ClosedFormUnavailable:
                continue
            except (ValueError, ArithmeticError):
                break
            assert _finite_arrays(out), f"{oname}/{rname}/{step}/{method}: valid input gave a non-finite state"
            methods.append(method)
        else:
            return level, inputs, methods
    raise AssertionError(f"{oname}/{rname}/{step}: no valid inputs found")


LEVEL_CASES = _level_cases()


def _solve_bounded(level, method, inputs, mutation=None):
    """``solve``; for extreme input at most 50 iterations: the guard checks input handling, not convergence
    (a ConvergenceError is a documented answer for extreme input; prox solvers spend ~20 s on keys x1e6)."""
    extreme = mutation is not None and _kind(mutation) == "extreme"
    options = {"max_iter": 50} if method == "iterative" and extreme else {}
    return solve(level, method=method, **inputs, **options)


# The sweep solves each mutation with the closed form when there is one, else iteratively; the
# hypothesis test below also runs the other method. (Iterative solves of extreme inputs cost the most.)


@pytest.mark.parametrize("oname,rname,step", LEVEL_CASES, ids=["-".join(c) for c in LEVEL_CASES])
def test_levels_answer_every_bad_argument(oname, rname, step):
    level, inputs, methods = _valid_level_setup(oname, rname, step)
    method = methods[0]

    def call(argument, mutation):
        bad = dict(inputs)
        bad[argument] = _mutate(inputs[argument], mutation)
        return check_call(lambda: _solve_bounded(level, method, bad, mutation), argument, mutation)

    sweep((f"{method} {mutation} {argument}", lambda a=argument, m=mutation: call(a, m))
          for argument in ("M_t", "k", "v") if inputs[argument] is not None for mutation in MUTATIONS)


@pytest.mark.parametrize("oname,rname,step", LEVEL_CASES, ids=["-".join(c) for c in LEVEL_CASES])
def test_level_parameters_answer_bad_values(oname, rname, step):
    """Each constructor parameter of the objective and the retention, mutated as a number."""
    level, inputs, methods = _valid_level_setup(oname, rname, step)
    names = list(_constructor_values(OBJECTIVES[oname])) + list(_constructor_values(RETENTIONS[rname]))

    def call(name, mutation):
        value = _constructor_values(OBJECTIVES[oname]).get(name, _constructor_values(RETENTIONS[rname]).get(name))
        bad = _mutate(float(value), mutation)

        def build_and_solve():
            return _solve_bounded(_level(oname, rname, step, **{name: bad}), methods[0], inputs,
                                  "huge_1e6" if _kind(mutation, SCALAR_MUTATIONS) == "extreme" else None)

        return check_call(build_and_solve, name, mutation, table=SCALAR_MUTATIONS)

    sweep((f"{mutation} {name}", lambda n=name, m=mutation: call(n, m))
          for name in names for mutation in SCALAR_MUTATIONS)


@pytest.mark.parametrize("oname,rname,step", LEVEL_CASES, ids=["-".join(c) for c in LEVEL_CASES])
def test_levels_answer_bad_arguments_with_random_details(oname, rname, step):
    level, inputs, methods = _valid_level_setup(oname, rname, step)
    arguments = [a for a in ("M_t", "k", "v") if inputs[a] is not None]

    @settings(max_examples=2 if settings().max_examples <= 25 else settings().max_examples)
    @given(st.sampled_from(arguments), st.sampled_from(sorted(MUTATIONS)), st.sampled_from(methods),
           st.integers(0, 10**6))
    def run(argument, mutation, method, detail):
        bad = dict(inputs)
        bad[argument] = _mutate(inputs[argument], mutation, detail)
        check_call(lambda: _solve_bounded(level, method, bad, mutation), argument, mutation)

    run()


# ----------------------------------------------------------------------------- optimisers

from refmem.optimizers import OPTIMIZERS, make  # noqa: E402

OPTIMIZER_NAMES = sorted(OPTIMIZERS)  # read when the tests are collected: optimisers added later are covered


def _optimizer_inputs():
    g = np.random.default_rng(0)
    return {"W": g.standard_normal((2, 3, 4)), "g": g.standard_normal((2, 3, 4))}


def _optimizer_methods(opt, inputs):
    """The methods that step ``opt`` on valid input (an MLP memory has no closed form)."""
    methods = []
    for method in ("closed", "iterative"):
        try:
            opt.step(inputs["W"], inputs["g"], opt.init(inputs["W"]), method=method)
        except ClosedFormUnavailable:
            continue
        methods.append(method)
    return methods


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_optimizers_answer_every_bad_argument(name):
    opt = make(name)
    inputs = _optimizer_inputs()
    methods = _optimizer_methods(opt, inputs)

    def call(argument, mutation, method):
        bad = dict(inputs)
        bad[argument] = _mutate(inputs[argument], mutation)

        def init_and_step():
            state = opt.init(bad["W"])
            return opt.step(bad["W"], bad["g"], state, method=method)

        return check_call(init_and_step, argument, mutation)

    sweep((f"{method} {mutation} {argument}", lambda a=argument, m=mutation, me=method: call(a, m, me))
          for method in methods for argument in inputs for mutation in MUTATIONS)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_optimizer_hyperparameters_answer_bad_values(name):
    """Each hyperparameter, mutated as a number (its default, or 0.5 where the default is not a number)."""
    inputs = _optimizer_inputs()
    params = inspect.signature(OPTIMIZERS[name].__init__).parameters
    numbers = {n: p.default for n, p in params.items()
               if n != "self" and isinstance(p.default, (int, float)) and not isinstance(p.default, bool)}

    method = _optimizer_methods(make(name), inputs)[0]

    def call(hp, mutation):
        bad = _mutate(numbers[hp], mutation)

        def make_and_step():
            opt = make(name, **{hp: bad})
            return opt.step(inputs["W"], inputs["g"], opt.init(inputs["W"]), method=method)

        return check_call(make_and_step, hp, mutation, table=SCALAR_MUTATIONS)

    sweep((f"{mutation} {hp}", lambda h=hp, m=mutation: call(h, m))
          for hp in numbers for mutation in SCALAR_MUTATIONS)


# ----------------------------------------------------------------------------- losses

from refmem.losses import LOSSES  # noqa: E402


def _loss_inputs(name):
    g = np.random.default_rng(0)
    y = g.standard_normal((2, 4))
    target = np.exp(g.standard_normal((2, 4)))
    target = target / target.sum(axis=-1, keepdims=True)  # a distribution: valid for both losses
    return {"y": y, "target": target}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("what", ["value", "grad", "curvature"])
def test_losses_answer_every_bad_argument(name, what):
    loss = LOSSES[name]()
    inputs = _loss_inputs(name)
    arguments = ["target"] if what == "curvature" else ["y", "target"]

    # the bounds read the target alone: any length, library or float dtype of it is another valid target
    alone = {"wrong_last_length", "other_backend", "float32_among_float64"} if what == "curvature" else set()

    def call(argument, mutation):
        bad = dict(inputs)
        bad[argument] = _mutate(inputs[argument], mutation)
        fn = getattr(loss, what)
        table = dict(MUTATIONS, **{m: ("extreme", MUTATIONS[m][1]) for m in alone})
        return check_call(lambda: fn(*[bad[a] for a in arguments]), argument, mutation, table=table)

    sweep((f"{what} {mutation} {argument}", lambda a=argument, m=mutation: call(a, m))
          for argument in arguments for mutation in MUTATIONS)


# ----------------------------------------------------------------------------- the reported cases, one test each


def test_none_for_a_required_gate_names_it():
    inp = MEMORIES["delta_rule"].make_inputs(0, (2,), 4, 3, 3, np)
    with pytest.raises(TypeError, match="beta must be an array; got None"):
        MEMORIES["delta_rule"].recurrent(inp["q"], inp["k"], inp["v"], None)


def test_a_chunk_size_of_a_million_does_not_allocate():
    """chunk_size = 10**6 once asked for a (10**6, 10**6) mask (931 GiB)."""
    inp = MEMORIES["delta_rule"].make_inputs(0, (2,), 7, 3, 3, np)
    o, M = MEMORIES["delta_rule"].chunked(**inp, chunk_size=10**6)
    o_ref, M_ref = MEMORIES["delta_rule"].recurrent(**inp)
    # chunked == recurrent: T = 7 steps of O(1) arithmetic, a few hundred eps at most
    np.testing.assert_allclose(o, o_ref, rtol=0, atol=1e-13)


@pytest.mark.parametrize("shape,what", [((2, 4, 0), "d_k >= 1"), ((0, 4, 3), "empty batch axis")])
def test_empty_key_or_batch_axes_are_clear_errors(shape, what):
    """memora with d_k = 0 divided by zero; a batch of size 0 reached numpy's zero-size reduction."""
    inp = MEMORIES["memora"].make_inputs(0, (2,), 4, 3, 3, np)
    k = np.ones(shape)
    q = np.ones(shape)
    v = np.ones(shape[:-1] + (3,))
    eta = np.full(shape[:-1], 0.1)
    with pytest.raises(ValueError, match=what):
        MEMORIES["memora"].recurrent(**dict(inp, q=q, k=k, v=v, eta=eta))


def test_impulse_response_names_a_bad_dtype():
    from refmem.optimizers.momentum_errata import impulse_response

    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'; got 'bogus'"):
        impulse_response(dtype="bogus")
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        impulse_response(n=0)


def test_big_endian_float64_is_accepted_and_gives_the_same_result():
    inp = MEMORIES["gated_delta_rule"].make_inputs(0, (2,), 6, 3, 4, np)
    o_ref, M_ref = MEMORIES["gated_delta_rule"].recurrent(**inp)
    swapped = {n: a.astype(">f8") for n, a in inp.items()}
    for form in ("recurrent", "chunked"):
        o, M = getattr(MEMORIES["gated_delta_rule"], form)(**swapped)
        # the same numbers in another byte order: recurrent bit for bit, chunked within its rounding
        np.testing.assert_allclose(o, o_ref, rtol=0, atol=0 if form == "recurrent" else 1e-13)


def test_float16_is_refused_with_the_reason():
    inp = MEMORIES["delta_rule"].make_inputs(0, (2,), 4, 3, 3, np)
    half = {n: a.astype(np.float16) for n, a in inp.items()}
    with pytest.raises(TypeError, match=r"q must have a real floating dtype, float32 or float64; got float16 "
                                        r"\(half precision is not supported"):
        MEMORIES["delta_rule"].recurrent(**half)


def test_messages_name_the_argument_the_caller_passed():
    from refmem.optimizers.local_surprise import nl6_printed_step, surprise_step

    W = np.ones((2, 3, 4))
    x = np.ones((2, 4))
    target = np.ones((2, 3))
    with pytest.raises(TypeError, match="W_t must have a real floating dtype"):
        surprise_step("squared_error", W.astype(int), x, target)
    with pytest.raises(ValueError, match="x_prev has length 5"):
        nl6_printed_step("squared_error", W, np.ones((2, 5)), x, target)
    with pytest.raises(ValueError, match=r"eta must be a number or an array broadcastable to the batch dims of W_t"):
        surprise_step("squared_error", W, x, target, eta=np.ones(3))


def test_an_overflowing_deep_scan_names_the_step_not_an_internal_weight():
    """The deep memory's overflow once read 'params[1] (W2) contains non-finite values'."""
    inp = MEMORIES["deep_memory"].make_inputs(0, (1,), 6, 3, 3, np)
    v = inp["v"].copy()
    v[0, 3] = 1e200
    with pytest.raises(DivergenceError, match=r"from step t = [34] on.*driven by v at step 3") as info:
        MEMORIES["deep_memory"].recurrent(**dict(inp, v=v))
    assert "params" not in str(info.value)


def test_a_state_error_names_initial_state_at_step_0_and_is_a_divergence_later():
    """The KL retention refuses a state with a zero entry: the caller's initial_state at step 0, the scan's own later."""
    from refmem.memories._level_scan import state_step

    inp = MEMORIES["memora"].make_inputs(0, (2,), 5, 3, 3, np)
    with pytest.raises(ValueError, match="initial_state is not a valid state for this memory: M_t must have strictly"):
        MEMORIES["memora"].recurrent(**dict(inp, initial_state=np.zeros((2, 3, 3))))

    def refuses_state(M_t):
        raise ValueError("M_t must have strictly positive entries")

    with pytest.raises(DivergenceError, match="the state after step 2 is not a valid state for step 3") as info:
        state_step(refuses_state, 3, ("M_t",), None)
    assert info.value.step == 2


def test_sweep_size(capsys):
    """How many bad-input calls the sweep makes (the figure the guard reports)."""
    memories = sum(len(table) for n, f in MEMORY_FORMS for _, table in _memory_arguments(n, f))
    levels = len(LEVEL_CASES) * 3 * len(MUTATIONS)  # M_t, k, v (k is None for key-less objectives)
    level_params = sum(len(_constructor_values(OBJECTIVES[o])) + len(_constructor_values(RETENTIONS[r]))
                       for o, r, _ in LEVEL_CASES) * len(SCALAR_MUTATIONS)
    optimizers = len(OPTIMIZER_NAMES) * 2 * 2 * len(MUTATIONS)
    losses = len(LOSSES) * 5 * len(MUTATIONS)
    with capsys.disabled():
        print(f"\nbad-input sweep: memories {memories} ({len(MEMORY_FORMS)} forms), levels <= {levels} "
              f"({len(LEVEL_CASES)} cases), level parameters {level_params}, optimisers {optimizers} "
              f"({len(OPTIMIZER_NAMES)}), losses {losses}")
    assert memories > 0


@pytest.mark.parametrize("retention", ["eta", "alpha"])
def test_a_batched_step_or_gate_of_the_wrong_length_is_named(retention):
    """A batched ``eta`` (or ``alpha``) that does not broadcast with the problems' batch is refused before any
    arithmetic, naming it (numpy's own broadcast message named no argument)."""
    from refmem import Level, solve
    from refmem.objectives import L2
    from refmem.retentions import ForgetGate

    g = np.random.default_rng(0)
    M, k, v = g.standard_normal((2, 4, 3)), g.standard_normal((2, 3)), g.standard_normal((2, 4))
    params = {"eta": np.array([1.0, 2.0, 3.0]), "alpha": 0.5} if retention == "eta" else \
        {"eta": 1.0, "alpha": np.array([0.1, 0.2, 0.3])}
    for method in ("closed", "iterative"):
        with pytest.raises(ValueError, match=rf"batch shapes of M_t, k, v, {retention} do not broadcast"):
            solve(Level(L2(), ForgetGate(**params)), M, k, v, method=method)
    ok = {"eta": np.array([1.0, 2.0]), "alpha": np.array([0.3, 0.6])}  # one per problem: accepted
    M_new, _ = solve(Level(L2(), ForgetGate(**ok)), M, k, v)
    assert M_new.shape == M.shape and np.all(np.isfinite(M_new))
