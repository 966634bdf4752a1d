r"""Hand-written backward passes (``refmem.backward``) against independent witnesses.

Every memory in ``BACKWARD``, recurrent and chunked VJPs, is checked

1. against central finite differences of refmem's forward (NumPy, float64);
2. chunked == recurrent;
3. against JAX autodiff and torch autograd through refmem's own forward in
   float64 (each skipped, with the reason, where the library is not installed);
4. on array_api_strict == NumPy;

plus the adjoint structure the delta rule's docstring states, and bad input.

The scalar whose gradient is taken is ``L = <do, o> + <dM_T, M_T>``.

Tolerances
----------
Finite differences (step ``h``): the error of a central difference is at most
``h^2/6 |f'''| + delta/h`` (:func:`refmem.finite_differences.central_difference_bound`).
The curvature term is *measured* by Richardson's comparison of the steps ``h``
and ``2h``: ``D(2h) - D(h) = 3 c h^2 + O(h^4)``, so ``|D(2h) - D(h)| / 3``
estimates the truncation error of ``D(h)`` entry by entry; twice that covers
the neglected higher-order term. The rounding ``delta`` of one evaluation of
``L`` is bounded by ``growth * u * L_abs`` with ``L_abs = <|do|, |o|> + <|dM_T|, |M_T|>``,
``u`` the unit roundoff and ``growth = 8 (T + 1)(d_k + d_v + 4)`` (T steps of
dot products of length at most ``d_k + d_v``, as in ``tests/test_cupy.py``),
and the two rounded evaluations add ``delta / h``, once for ``h`` and once for
the Richardson estimate. Ceiling: a tolerance above ``1e-5`` times the
gradient's scale would make the check meaningless and fails the test.

Exact witnesses (chunked vs recurrent, autodiff, backends): the two results
are the same derivative computed in a different order, so they differ by
rounding alone: ``8 max(kappa, 1) growth u`` relative to the gradient's scale,
with ``kappa`` the measured relative condition number of the gradient (its
relative change under a relative perturbation ``1e-6`` of the data, as for
the forward in ``tests/test_cupy.py``); floor ``1e-12``.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refmem
from refmem import memories
from refmem.backward import FORMS
from refmem.memories import backward_passes
from refmem.memories.residual_mlp import ResidualLoss
from refmem.metrics import rel_error
from refmem.validation import DivergenceError

MEMORIES = memories.MEMORIES
BACKWARD = backward_passes()
U64 = np.finfo(np.float64).eps / 2
H = 1e-5  # finite-difference step (inputs are O(1); about u^(1/3) balances truncation and rounding)
FD_CEILING = 1e-5  # a finite-difference tolerance above this (relative to the gradient's scale) proves nothing
FLOOR = 1e-12
CG_RTOL = 1e-13  # the chunked Mesa's conjugate-gradient relative residual in float64 (refmem.chunked.mesa)

# the implicit steps have no closed form: their forwards solve every step iteratively
ITERATIVE = {"step": "implicit", "method": "iterative"}


def gates_inside(inp):
    """Forget gates at most 0.99 and simplex states at least half uniform (applied to the iterative variants' inputs
    by :func:`problem`): a difference step of up to 4e-3 (four pilot steps) stays inside ``[0, 1]`` and the
    positive entries."""
    if "alpha" in inp:
        inp["alpha"] = np.minimum(inp["alpha"], 0.99)
    M = inp.get("initial_state")
    if M is not None and not isinstance(M, tuple) and bool(np.all(M > 0)):  # Memora's rows on the simplex
        inp["initial_state"] = 0.5 * M + 0.5 * np.mean(M, axis=-1, keepdims=True)


def per_value_channel_steps(inp, g):
    """One step size per token and value channel (Longhorn's original layout)."""
    inp["beta"] = g.uniform(0.1, 3.0, size=tuple(inp["v"].shape))


def class_weights(inp, g):
    """Softmax cross-entropy targets are class weights >= 0 (kept off 0, where a difference step would leave the domain)."""
    inp["v"] = np.abs(inp["v"]) + 0.1


def shared_window_weights(inp, g):
    """Omega's window weights ``gamma [c]``, shared by every step and batch entry."""
    inp["gamma"] = inp["gamma"][(0,) * (inp["gamma"].ndim - 1)]


def per_key_channel_regulariser(inp, g):
    """Mesa's regulariser per key channel, ``lam [..., T, d_k]``."""
    inp["lam"] = g.uniform(0.3, 1.5, size=tuple(inp["k"].shape))


# the layouts and options each memory's backward is checked in: id -> (make_inputs kwargs, forward options, transform)
VARIANTS = {
    "gated_linear_attention": {"": ({}, {}, None), "per_channel": ({"per_channel": True}, {}, None)},
    "longhorn": {"": ({}, {}, None), "per_channel": ({"per_channel": True}, {}, None)},
    "dgd": {"": ({}, {}, None), "per_channel": ({}, {}, per_value_channel_steps),
            "softmax_cross_entropy": ({}, {"loss": "softmax_cross_entropy"}, class_weights)},
    "omega": {"": ({}, {}, None), "shared_weights": ({}, {}, shared_window_weights)},
    "omega_implicit": {"": ({}, {}, None), "shared_weights": ({}, {}, shared_window_weights)},
    "mesa": {"": ({}, {}, None), "per_channel": ({}, {}, per_key_channel_regulariser)},
    "yaad": {"": ({}, {}, None), "norm": ({}, {"mode": "norm"}, None), "implicit": ({}, {"step": "implicit"}, None),
             "implicit_norm": ({}, {"step": "implicit", "mode": "norm", "delta": 0.5}, None)},
    "deep_memory": {"": ({}, {}, None),
                    "huber_silu": ({}, {"loss": ResidualLoss("huber", delta=0.5), "activation": "silu"}, None),
                    "implicit": ({}, ITERATIVE, None)},
    "moneta": {"": ({}, {}, None), "implicit": ({}, ITERATIVE, None)},
    "memora": {"": ({}, {}, None), "implicit": ({}, ITERATIVE, None)},
}
# the implicit steps solved iteratively (refmem.backward.implicit_steps): their forwards' solves stop at a certified
# tolerance, an error finite differences must step over (evaluation_error, pilot_step)
ITERATIVE_VARIANTS = {(name, "implicit") for name in ("deep_memory", "moneta", "memora")}
SOLVER_RTOL = 1e-12  # refmem.solvers.default_rtol in float64
ITERATIVE_PILOT = 1e-3
# the zero start of Moneta's implicit step: the lq link's derivatives there need a step of 1e-8 (ZERO_START_STEPS),
# far below what the iterative solves' error allows (measured: tolerance 0.2 against the ceiling 1e-5 of the gradient)
ZERO_START_UNCHECKED = {("moneta", "implicit")}
EXTRA_STATES = {"titans": ("initial_momentum",)}  # start states beyond M_0, each with its gradient
# a state that lives on a manifold (Memora's rows on the simplex): a difference step leaves it, so the
# state check is off for the difference quotients (the forward's formula is defined off the manifold)
OFF_MANIFOLD_STATES = {"memora"}
# inputs whose difference step is relative to their size: Moneta's step sizes are 1e-3..1e-2 (its make_inputs)
# and the lq link's curvature in them grows like 1/eta^2, so an absolute step 1e-5 (1% of the smallest eta)
# leaves a truncation error above the ceiling; H times the largest entry keeps the relative step at H
RELATIVE_STEPS = {("moneta", "eta"): {"recurrent": H, "deep": H}}
# memories whose forward has a much larger third derivative than O(1): Moneta's lq link (q* = 4/3) has the
# curvature (|A_ij| / ||A||_q*)^(q* - 2) = (...)^(-2/3), large at the accumulator's small entries (the square of a
# small residual entry, with p = 3), so the truncation error (h^2 / 6 times the third derivative) of H leaves the
# ceiling (measured: 5.6e-5 against a ceiling 2.8e-5 at 1e-6); a step 3e-7 cuts it elevenfold and lets rounding
# (delta / h) grow 33-fold, to ~2e-5 L_abs at most, below the ceiling for these sizes
FD_STEPS = {"moneta": 3e-7}
# Moneta from the zero state: its first accumulator is eta u k^T with eta ~ 1e-2, entries down to ~1e-4, where the
# lq link's curvature (|A|^(-2/3)) is so large that a step 1e-6 in M_0 is far from the asymptotic regime Richardson
# assumes (measured on one case: error 2e-1 at h = 1e-5, 4e-3 at 1e-7, quadratic below); a step 1e-8 is in it
ZERO_START_STEPS = {"moneta": 1e-8}
# forms whose default start is a point without a gradient: Moneta on the deep memory starts at W1 = 0, so W2's
# gradient and the off-diagonal entries of W2 = I are 0, and the lq link (q* = 4/3) has an infinite slope at a
# zero accumulator entry; these cases always get a random start (test_moneta_deep_default_start_has_no_gradient)
NO_GRADIENT_AT_DEFAULT_START = {("moneta", "deep")}
# forms whose higher derivatives are so large that no single second-order step serves every shape: Moneta on the
# deep memory (the lq link's |A|^(q* - 2) curvature at small accumulator entries of both weight matrices; measured
# over 40 shapes: the second-order error at h = 1e-5 reaches 1e-2 of the gradient, while a step small enough for
# the truncation makes the rounding term delta / h pass the ceiling for O(1) gradients: 13 of 40 shapes failed).
# Their check takes the fourth-order (Richardson) stencil at a step chosen from the measured curvature
# (fourth_order_differences); measured over 80 random shapes: no failure, the tolerance at most 1.8e-6 of the
# gradient's scale, the error at most 8.6e-8.
CURVATURE_STEPPED = {("moneta", "deep")}
CASES = [(name, form, var)
         for name in sorted(BACKWARD)
         for form in FORMS if getattr(BACKWARD[name], form) is not None
         for var in (VARIANTS.get(name, {"": None}) if form != "deep" else {"": None})]
IDS = [f"{n}-{f}" + (f"-{v}" if v else "") for n, f, v in CASES]
# autodiff cannot differentiate the iterative variants' forwards (test_implicit_vjp_equals_jax_through_a_newton_polish)
AUTODIFF_CASES = [c for c in CASES if (c[0], c[2]) not in ITERATIVE_VARIANTS]
IMPLICIT_CASES = [c for c in CASES if (c[0], c[2]) in ITERATIVE_VARIANTS]


def options(name, var):
    return VARIANTS[name][var][1] if name in VARIANTS else {}


def forward(name, form, C=None):
    """The forward a form's backward differentiates: recurrent (the chunked form's too), mini-batch, deep."""
    spec = MEMORIES[name]
    if form == "deep":
        return spec.deep
    if form == "minibatch":
        return functools.partial(spec.minibatch, chunk_size=C)
    return spec.recurrent


def deep_state(name, seed, batch, d):
    """A random start ``(W1, W2)`` of the deep memory (rows on the simplex for Memora's KL retention)."""
    if name == "memora":
        from refmem.memories.memora import make_initial_state as simplex_point

        return simplex_point(seed, batch, d, d, np), simplex_point(seed + 1, batch, d, d, np)
    from refmem.memories.residual_mlp import make_initial_state

    return make_initial_state(seed, batch, d, np)


shapes = st.tuples(
    st.integers(0, 2**16),  # seed
    st.sampled_from([(1,), (2,)]),  # batch / heads
    st.integers(1, 9),  # T
    st.integers(1, 4),  # d_k
    st.integers(1, 4),  # d_v
    st.integers(1, 5),  # chunk size
    st.booleans(),  # with an initial state
)


def is_array(a):
    return hasattr(a, "shape") and hasattr(a, "dtype")


def leaves(inp):
    """``(key, part, array)`` for every differentiable input: arrays, and each array of a tuple state (a cache)."""
    out = []
    for key, a in inp.items():
        if isinstance(a, tuple):
            out += [(key, i, x) for i, x in enumerate(a)]
        elif is_array(a):
            out.append((key, None, a))
    return out


def leaf(grads, key, part):
    return grads[key] if part is None else grads[key][part]


def with_leaf(inp, key, part, x):
    """``inp`` with leaf ``(key, part)`` replaced by ``x``."""
    a = inp[key]
    return dict(inp, **{key: x if part is None else tuple(x if i == part else y for i, y in enumerate(a))})


def tree_map(f, a):
    return tuple(f(x) for x in a) if isinstance(a, tuple) else f(a)


def problem(name, var, seed, batch, T, d_k, d_v, with_state, form="recurrent", C=None):
    """Inputs (NumPy float64), cotangents ``do, dM_T`` (``dM_T`` shaped like the final state, tuple or matrix)."""
    spec = MEMORIES[name]
    make_kw, opts, transform = VARIANTS[name][var] if name in VARIANTS else ({}, {}, None)
    if form == "deep" or name == "deep_memory":
        d_v = d_k  # the deep memory maps d to d
    inp = dict(spec.make_inputs(seed, batch, T, d_k, d_v, np, "float64", **make_kw))
    g = np.random.default_rng(seed + 7)
    if transform is not None:
        transform(inp, g)
    if with_state or (name, form) in NO_GRADIENT_AT_DEFAULT_START:
        if form == "deep":
            for i, key in enumerate(("initial_state",) + EXTRA_STATES.get(name, ())):
                inp[key] = deep_state(name, seed + i, batch, d_k)
        elif spec.make_initial_state is not None:  # a state that is not a matrix (a key-value cache)
            inp["initial_state"] = spec.make_initial_state(seed, batch, d_k, d_v, np)
        else:
            for key in ("initial_state",) + EXTRA_STATES.get(name, ()):
                inp[key] = g.standard_normal(tuple(batch) + (d_v, d_k)) / np.sqrt(d_k)
    if (name, var) in ITERATIVE_VARIANTS:
        gates_inside(inp)
    do = g.standard_normal(tuple(batch) + (T, d_v))
    _, M = forward(name, form, C)(**inp, **opts)
    dM_T = tree_map(lambda x: g.standard_normal(x.shape), M)
    return inp, do, dM_T


def vjp(name, form, inp, do, dM_T, C, var=""):
    f = getattr(BACKWARD[name], form)
    return f(**inp, do=do, dM_T=dM_T, **options(name, var),
             **({"chunk_size": C} if form in ("chunked", "minibatch") else {}))


def loss(name, inp, do, dM_T, var="", form="recurrent", C=None):
    """``L = <do, o> + <dM_T, M_T>`` per leading perturbation index, and ``L_abs`` (rounding scale)."""
    o, M = forward(name, form, C)(**inp, **options(name, var))
    axes = lambda d: tuple(range(-d.ndim, 0))  # noqa: E731 (a leading perturbation axis stays)
    pairs = [(do, o)] + (list(zip(dM_T, M)) if isinstance(M, tuple) else [(dM_T, M)])
    L = sum(np.sum(d * x, axis=axes(d)) for d, x in pairs)
    L_abs = sum(np.sum(np.abs(d * x), axis=axes(d)) for d, x in pairs)
    return L, L_abs


def central(name, inp, do, dM_T, key, h, var="", part=None, form="recurrent", C=None):
    """Central differences of ``L`` in every entry of leaf ``(key, part)`` (all entries at once, on a leading axis)."""
    x = inp[key] if part is None else inp[key][part]
    n = x.size
    E = np.eye(n).reshape((n,) + x.shape)  # (n, *x.shape): coordinate directions
    lead = lambda a: tree_map(lambda y: np.broadcast_to(y, (n,) + y.shape), a) if (  # noqa: E731
        isinstance(a, tuple) or is_array(a)) else a  # options (a window length) stay as they are
    out = []
    for sgn in (1.0, -1.0):
        pert = with_leaf({k: lead(a) for k, a in inp.items()}, key, part, x + sgn * h * E)
        if "gamma" in inp and inp["gamma"].ndim == 1:  # weights shared by every step: the same [c] at each step
            steps = tuple(inp["k"].shape[:-1])
            pert["gamma"] = np.broadcast_to(pert["gamma"].reshape((n,) + (1,) * len(steps) + (-1,)),
                                            (n,) + steps + (inp["gamma"].shape[-1],))
        # Mesa's H_0 is checked for symmetry, Memora's state for its simplex rows; a difference step moves one
        # entry, so the check is off here
        with refmem.options(check_finite=part is None and not (key == "initial_state" and name in OFF_MANIFOLD_STATES)):
            out.append(loss(name, pert, do, dM_T, var, form, C)[0])
    return ((out[0] - out[1]) / (2 * h)).reshape(x.shape)


def growth(T, d_k, d_v):
    return 8 * (T + 1) * (d_k + d_v + 4)


def richardson_pair(name, inp, do, dM_T, key, h, var="", part=None, form="recurrent", C=None):
    """The fourth-order central differences ``R(h) = (4 D(h) - D(2h)) / 3`` and ``R(2h)`` (from ``D(2h), D(4h)``)."""
    D1, D2, D4 = (central(name, inp, do, dM_T, key, s * h, var, part, form, C) for s in (1, 2, 4))
    return (4 * D1 - D2) / 3, (4 * D2 - D4) / 3


def fourth_order_differences(name, inp, do, dM_T, key, pilot, delta, var="", part=None, form="recurrent", C=None):
    """Fourth-order differences of ``L`` in leaf ``(key, part)`` at a step chosen from the measured curvature.

    Returns ``(R, tol, h)``: the derivative estimate, its error bound per entry, the step.

    ``R(h) = (4 D(h) - D(2h)) / 3`` cancels the ``h^2`` term of the central difference ``D``,
    leaving ``c h^4`` (``c = f^(5) / 30``) plus the rounding ``(4 delta / h + delta / (2h)) / 3 = 1.5 delta / h``.
    A pilot step (:func:`pilot_step`) measures ``c`` (``|R(2 h) - R(h)| = 15 c h^4``, largest entry), and
    the step is the minimiser of ``c h^4 + 1.5 delta / h``, ``h = (1.5 delta / (4 c))^(1/5)`` (never above
    the pilot, whose widest difference stays inside the input's domain). At that
    step the truncation is measured again, entry by entry, by the same comparison (``|R(2h) - R(h)| / 15``;
    twice that covers the neglected higher-order term), and the rounding is counted twice, once for ``R(h)``
    and once for the comparison: ``tol = 2 trunc + 3 delta / h``.
    """
    R1, R2 = richardson_pair(name, inp, do, dM_T, key, pilot, var, part, form, C)
    c = float(np.max(np.abs(R2 - R1))) / (15 * pilot**4)
    h = pilot if c == 0 else min(pilot, (1.5 * delta / (4 * c)) ** 0.2)
    R1, R2 = richardson_pair(name, inp, do, dM_T, key, h, var, part, form, C)
    return R1, 2 * np.abs(R2 - R1) / 15 + 3 * delta / h + FLOOR, h


def pilot_step(name, key, x, var):
    """The pilot step of :func:`fourth_order_differences` for leaf ``x``; its widest difference is 4 pilots.

    A forward solved iteratively: ``ITERATIVE_PILOT`` (the solves' error needs a step far above ``H``), its gates
    kept off the end of their domain (:func:`gates_inside`). Otherwise ``H / 2``, whose widest difference reaches
    as far as the second-order check's ``2 H`` (a gate near the end of its domain stays inside it); a positive
    input with steps relative to its size (``RELATIVE_STEPS``) ``10 H`` of it (``4e-4`` relative at most).
    """
    relative = float(np.max(np.abs(x))) if (name, key) in RELATIVE_STEPS else None
    if (name, var) in ITERATIVE_VARIANTS:
        return ITERATIVE_PILOT * (relative or 1.0)
    return 10 * H * relative if relative is not None else H / 2


def evaluation_error(name, var, T, d_k, d_v, L_abs):
    """``delta``: the error of one evaluation of ``L`` (module docstring), plus the iterative solves' for those forwards.

    An iterative solve stops with its state ``M_t`` certified to the relative accuracy ``SOLVER_RTOL``
    (refmem.solvers.dispatch: the default tolerance of a float64 solve); ``L`` reads each of the ``T``
    states through the rest of the scan, so ``T + 1`` such errors move ``L`` by about
    ``(T + 1) SOLVER_RTOL L_abs`` (its absolute scale). Unlike rounding this error does not cancel between
    nearby inputs (the solver may stop one iteration earlier): it is the ``delta`` the step must beat.
    """
    delta = growth(T, d_k, d_v) * U64 * float(L_abs)
    if (name, var) in ITERATIVE_VARIANTS:
        delta += (T + 1) * SOLVER_RTOL * float(L_abs)
    return delta


# the iterative variants' forwards solve every step of every difference quotient (seconds each on 2 busy cores, and
# the fourth-order stencil takes six of them per input): fewer and smaller shapes keep the suite in its budget
small_shapes = st.tuples(st.integers(0, 2**16), st.sampled_from([(1,), (2,)]), st.integers(1, 4), st.integers(1, 3),
                         st.integers(1, 3), st.integers(1, 4), st.booleans())


@pytest.mark.parametrize("name, form, var", CASES, ids=IDS)
def test_vjp_equals_central_differences(name, form, var):
    iterative = (name, var) in ITERATIVE_VARIANTS

    @settings(max_examples=3 if iterative else 6, deadline=None)
    @given(small_shapes if iterative else shapes)
    def check(shape):
        seed, batch, T, d_k, d_v, C, with_state = shape
        inp, do, dM_T = problem(name, var, seed, batch, T, d_k, d_v, with_state, form, C)
        d_v = inp["v"].shape[-1]
        grads = vjp(name, form, inp, do, dM_T, C, var)
        want_keys = {key for key, _, _ in leaves(inp)} | {"initial_state", *EXTRA_STATES.get(name, ())}
        assert set(grads) == want_keys, f"gradients {sorted(grads)} vs inputs {sorted(want_keys)}"
        _, L_abs = loss(name, inp, do, dM_T, var, form, C)
        delta = evaluation_error(name, var, T, d_k, d_v, L_abs)  # rounding (and solves) of one evaluation of L
        for key, part, x in leaves(inp):
            h = (RELATIVE_STEPS[name, key][form] * float(np.max(np.abs(x))) if (name, key) in RELATIVE_STEPS
                 else FD_STEPS.get(name, H))
            if (name, form) in CURVATURE_STEPPED or (name, var) in ITERATIVE_VARIANTS:
                fd_h, tol, h = fourth_order_differences(name, inp, do, dM_T, key, pilot_step(name, key, x, var),
                                                        delta, var, part, form, C)
            else:
                fd_h = central(name, inp, do, dM_T, key, h, var, part, form, C)
                fd_2h = central(name, inp, do, dM_T, key, 2 * h, var, part, form, C)
                trunc = np.abs(fd_2h - fd_h) / 3  # Richardson: the measured h^2 f'''/6 term, per entry
                tol = 2 * trunc + 2 * delta / h + FLOOR
            scale = max(1.0, float(np.max(np.abs(fd_h))))
            assert float(np.max(tol)) <= FD_CEILING * scale, f"{key}: FD tolerance {np.max(tol):.1e} is too loose"
            got = np.asarray(leaf(grads, key, part))
            err = np.abs(got - fd_h)
            worst = np.unravel_index(np.argmax(err - tol), err.shape)
            assert np.all(err <= tol), (f"{name}/{form} d{key}{list(worst)}: {got[worst]:.12e} vs FD "
                                        f"{fd_h[worst]:.12e} (err {err[worst]:.1e} > tol {tol[worst]:.1e}), {shape}")
        # dM_0 when no initial state was given: the gradient in the zero start
        if (not with_state and MEMORIES[name].make_initial_state is None and form != "deep"
                and (name, var) not in ZERO_START_UNCHECKED):
            for key in ("initial_state",) + EXTRA_STATES.get(name, ()):
                state = np.zeros(tuple(batch) + (d_v, d_k))
                h = ZERO_START_STEPS.get(name, FD_STEPS.get(name, H))
                zero = dict(inp, **{key: state})
                if (name, var) in ITERATIVE_VARIANTS:  # as above, at a step chosen from the curvature
                    fd, tol, h = fourth_order_differences(name, zero, do, dM_T, key, ITERATIVE_PILOT, delta, var,
                                                          form=form, C=C)
                    assert float(np.max(tol)) <= FD_CEILING * max(1.0, float(np.max(np.abs(fd)))), key
                else:
                    fd = central(name, zero, do, dM_T, key, h, var, form=form, C=C)
                    fd_2h = central(name, zero, do, dM_T, key, 2 * h, var, form=form, C=C)
                    tol = 2 * np.abs(fd_2h - fd) / 3 + 2 * delta / h + 1e-9  # as above: measured truncation + rounding
                assert np.all(np.abs(np.asarray(grads[key]) - fd) <= tol), key

    check()


def condition(name, var, seed, batch, T, d_k, d_v, with_state, C, form="recurrent"):
    """Measured relative condition number of the gradients w.r.t. the data (two relative perturbations 1e-6)."""
    inp, do, dM_T = problem(name, var, seed, batch, T, d_k, d_v, with_state, form, C)
    return condition_of(name, inp, do, dM_T, seed, C=C, var=var, form=form)


def condition_of(name, inp, do, dM_T, seed, C=1, var="", form="recurrent"):
    """:func:`condition` for given inputs (of the recurrent backward, or of the mini-batch or deep one)."""
    form = form if form in ("minibatch", "deep") else "recurrent"
    base = vjp(name, form, inp, do, dM_T, C, var)
    g = np.random.default_rng(seed)
    kappa = 0.0
    for _ in range(2):
        pert = {k: (tree_map(lambda a: a * (1 + 1e-6 * g.uniform(-1, 1, a.shape)), x)
                    if k in ("q", "k", "v", "initial_state") else x) for k, x in inp.items()}
        with refmem.options(check_finite=False):  # a perturbed Mesa H_0 is no longer exactly symmetric
            out = vjp(name, form, pert, do, dM_T, C, var)
        for key, part, b in leaves(base):
            scale = np.max(np.abs(b)) if b.size else 0.0
            if scale > 0:
                kappa = max(kappa, float(np.max(np.abs(leaf(out, key, part) - b)) / scale) / 1e-6)
    return kappa


def assert_same_gradients(got, want, tol, what):
    assert set(got) == set(want), f"{what}: gradients {sorted(got)} vs {sorted(want)}"
    worst = 0.0
    for key, part, b in leaves(want):
        a, b = to_numpy(leaf(got, key, part)), np.asarray(b)
        assert a.shape == b.shape, f"{what}: d{key} shape {a.shape} vs {b.shape}"
        err = rel_error(a, b, np)
        assert err <= tol, f"{what}: d{key} relative error {err:.2e} > {tol:.2e}"
        worst = max(worst, err)
    return worst


def to_numpy(a):
    if hasattr(a, "detach"):
        return a.detach().numpy()
    return np.asarray(a)


@pytest.mark.parametrize("name, form, var", [c for c in CASES if c[1] == "chunked"],
                         ids=[i for i, c in zip(IDS, CASES) if c[1] == "chunked"])
def test_chunked_backward_equals_recurrent_backward(name, form, var):
    @settings(max_examples=10, deadline=None)
    @given(shapes)
    def check(shape):
        seed, batch, T, d_k, d_v, C, with_state = shape
        inp, do, dM_T = problem(name, var, seed, batch, T, d_k, d_v, with_state)
        kappa = max(condition(name, var, seed, batch, T, d_k, d_v, with_state, C), 1.0)
        # a chunked form that solves by conjugate gradient (its device_reads say so) stops at the relative
        # residual CG_RTOL, which moves the solution by up to kappa CG_RTOL: added to the rounding term
        cg = 8 * kappa * CG_RTOL if "chunked" in MEMORIES[name].device_reads else 0.0
        tol = max(FLOOR, 8 * kappa * growth(T, d_k, d_v) * U64 + cg)
        assert_same_gradients(vjp(name, "chunked", inp, do, dM_T, C, var), vjp(name, "recurrent", inp, do, dM_T, C, var),
                              tol, f"{name} chunked (C={C}) vs recurrent {shape}")

    check()


@pytest.mark.parametrize("name", ["gated_linear_attention", "gated_delta_rule"])
def test_zero_gates_have_exact_gradients_in_both_forms(name):
    """A gate of exactly 0 (the state erased) needs no log and no division: chunked == recurrent there too."""
    inp, do, dM_T = problem(name, "", 3, (2,), 8, 3, 2, True)
    alpha = np.array(inp["alpha"])
    alpha[:, [0, 2, 5]] = 0.0  # the first step erases the start state
    inp["alpha"] = alpha
    rec = vjp(name, "recurrent", inp, do, dM_T, 3)
    # the first gate erases the start state before any read: dM_0 = 0 exactly
    assert np.all(rec["initial_state"] == 0.0)
    for C in (1, 3, 4, 8):
        kappa = condition_of(name, inp, do, dM_T, 3)
        tol = max(FLOOR, 8 * max(kappa, 1.0) * growth(8, 3, 2) * U64)
        assert_same_gradients(vjp(name, "chunked", inp, do, dM_T, C), rec, tol, f"{name} C={C}")


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_start", "initial_state"])
def test_titans_chunked_backward_at_gates_0_and_1(with_state):
    """Titans' forgetting ``alpha`` and momentum decay ``eta`` at exactly 0 and 1 and within 1e-12 of them (the
    memory or the momentum erased or kept whole), over a sequence long enough for several checkpoint spans of
    several chunks each (``sqrt(T / C)`` chunks per span), for chunk sizes that divide ``T`` and that do not:
    chunked == recurrent, to the rounding tolerance above."""
    T, d_k, d_v = 40, 3, 2
    inp, do, dM_T = problem("titans", "", 9, (2,), T, d_k, d_v, with_state)
    g = np.random.default_rng(9)
    for key in ("alpha", "eta"):
        x = np.array(inp[key])
        pick = g.integers(0, 5, size=x.shape)  # (2, T): which steps get an extreme gate
        for i, value in enumerate((0.0, 1.0, 1e-12, 1 - 1e-12)):
            x[pick == i] = value
        inp[key] = x
    rec = vjp("titans", "recurrent", inp, do, dM_T, 1)
    kappa = condition_of("titans", inp, do, dM_T, 9)
    tol = max(FLOOR, 8 * max(kappa, 1.0) * growth(T, d_k, d_v) * U64)
    for C in (1, 3, 4, 7, 8, 40):
        assert_same_gradients(vjp("titans", "chunked", inp, do, dM_T, C), rec, tol, f"titans C={C}")


@pytest.mark.parametrize("T, d, C", [(600, 16, 16), (600, 16, 8)])
def test_titans_chunked_backward_peak_extra_memory(T, d, C):
    """The chunked Titans backward holds at most 6 B H T d values above its inputs (tracemalloc), C <= d.

    Its gradients alone are ``dq, dk, dv``: 3 B H T d values (the gates' B H T each add 1/d of that); joining
    one gradient from its pieces holds it twice for a moment (+1); the checkpoint pairs (``d_v x 2 d_k`` at
    the start of every span of ``sqrt(T / C)`` chunks, and inside the span being differentiated at each of its
    chunks: about ``4 sqrt(C / T) d / C``) and one chunk's temporaries (a few dozen ``C x C`` and ``C x d``
    arrays, about ``45 C / T``) shrink as ``T`` grows. Measured: 5.2 and 5.1 here, 5.0 at ``T = 1024`` and
    4.3 at ``T = 4096`` (``d = C = 32``). A backward that kept every chunk-start pair and a block's factors
    at once (measured 7.4 before the checkpoint spans) fails."""
    import tracemalloc

    B, Hd = 2, 2
    spec = MEMORIES["titans"]
    inputs = spec.make_inputs(0, (B, Hd), T, d, d, np, "float64")
    do = np.random.default_rng(1).standard_normal((B, Hd, T, d))
    spec.backward.chunked(**inputs, do=do, chunk_size=C)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        grads = spec.backward.chunked(**inputs, do=do, chunk_size=C)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert grads["q"].shape == (B, Hd, T, d)
    assert peak - before <= 6 * B * Hd * T * d * 8, (peak - before) / (B * Hd * T * d * 8)


# --------------------------------------------------------------------------- autodiff witnesses

HAVE_JAX = importlib.util.find_spec("jax") is not None
HAVE_TORCH = importlib.util.find_spec("torch") is not None
AUTODIFF_SHAPES = [(0, (2,), 5, 3, 2, 2, True), (1, (1,), 7, 2, 3, 3, False), (2, (2,), 4, 4, 4, 4, True)]
# forwards that solve every step through refmem.level.solve or the deep memory's step (hundreds of small
# operations per step, measured 10-50 s per shape under JAX's op-by-op dispatch on 2 busy cores): their autodiff
# witness checks the first shape only, to keep the suite in its budget; finite differences cover the shape space
LEVEL_SOLVE_FORWARDS = {"yaad", "moneta", "memora", "deep_memory"}


def textbook_omega_implicit(q, k, v, alpha, gamma, *, initial_state=None):
    """The implicit Omega step as printed, ``M_t = (a_t M_{t-1} + V^T G K)(I + K^T G K)^{-1}``, any array library.

    refmem's forward solves this step in the SVD basis of the weighted keys; the
    derivative of an SVD is undefined where singular values repeat (a window
    padded with zero keys has several zero ones), so autodiff through it returns
    nan there. The autodiff witness differentiates this plain solve instead.
    """
    import array_api_compat

    xp = array_api_compat.array_namespace(q, k, v)
    T, d_k, c = k.shape[-2], k.shape[-1], gamma.shape[-1]
    pad = lambda x: xp.concat([xp.zeros(tuple(x.shape[:-2]) + (c - 1, x.shape[-1]), dtype=x.dtype), x],  # noqa: E731
                              axis=-2)
    Kp, Vp = pad(k), pad(v)
    M = initial_state if initial_state is not None else xp.zeros(tuple(k.shape[:-2]) + (v.shape[-1], d_k),
                                                                 dtype=k.dtype)
    eye = xp.eye(d_k, dtype=k.dtype)
    outs = []
    for t in range(T):
        K, V = Kp[..., t:t + c, :], Vp[..., t:t + c, :]
        g = gamma if gamma.ndim == 1 else gamma[..., t, :]
        GK = g[..., :, None] * K
        N = alpha[..., t, None, None] * M + xp.matrix_transpose(V) @ GK
        B = eye + xp.matrix_transpose(K) @ GK
        M = xp.matrix_transpose(xp.linalg.solve(B, xp.matrix_transpose(N)))  # N B^{-1}, B symmetric
        outs.append((M @ q[..., t, :, None])[..., 0])
    return xp.stack(outs, axis=-2), M


# forwards the autodiff witnesses differentiate instead of refmem's, with the reason in their docstrings
WITNESS_FORWARDS = {"omega_implicit": textbook_omega_implicit}


def witness_forward(name, form="recurrent", C=None):
    if form in ("recurrent", "chunked"):
        return WITNESS_FORWARDS.get(name, MEMORIES[name].recurrent)
    return forward(name, form, C)


def split(inp):
    """Differentiable leaves and the rest (options such as a window length)."""
    ls = leaves(inp)
    return ls, {k: a for k, a in inp.items() if not (isinstance(a, tuple) or is_array(a))}


def rebuild(ls, values):
    """``{key: array or tuple}`` from leaf values in the order of ``ls``."""
    out = {}
    for (key, part, _), x in zip(ls, values):
        out[key] = x if part is None else out.get(key, ()) + (x,)
    return out


def autodiff_jax(name, inp, do, dM_T, opts, form="recurrent", C=None):
    import jax

    jnp = refmem.backends.get_backend("jax").namespace()  # switches on 64-bit mode
    ls, rest = split(inp)
    fwd = witness_forward(name, form, C)

    def f(*xs):
        return fwd(**rebuild(ls, xs), **rest, **opts)

    with refmem.options(check_finite=False):  # the input checks read values; JAX's tracers have none to read
        _, pullback = jax.vjp(f, *(jnp.asarray(x) for _, _, x in ls))
    grads = pullback((jnp.asarray(do), tree_map(jnp.asarray, dM_T)))
    return rebuild(ls, [np.asarray(g) for g in grads])


def autodiff_torch(name, inp, do, dM_T, opts, form="recurrent", C=None):
    import torch

    ls, rest = split(inp)
    ts = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for _, _, x in ls]
    with warnings.catch_warnings():  # Mesa's input check reads H_0's asymmetry as a float: torch warns, harmlessly
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
        o, M = witness_forward(name, form, C)(**rebuild(ls, ts), **rest, **opts)
    pairs = [(o, do)] + (list(zip(M, dM_T)) if isinstance(M, tuple) else [(M, dM_T)])
    sum((x * torch.tensor(d)).sum() for x, d in pairs).backward()
    return rebuild(ls, [t.grad.numpy() for t in ts])


WITNESSES = [
    pytest.param(autodiff_jax, marks=pytest.mark.skipif(not HAVE_JAX, reason="jax is not installed (refmem[jax])"),
                 id="jax"),
    pytest.param(autodiff_torch, marks=pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed "
                                                          "(refmem[torch])"), id="torch"),
]


@pytest.mark.parametrize("witness", WITNESSES)
@pytest.mark.parametrize("name, form, var", AUTODIFF_CASES, ids=[IDS[CASES.index(c)] for c in AUTODIFF_CASES])
def test_vjp_equals_autodiff_through_the_forward(witness, name, form, var):
    for shape in AUTODIFF_SHAPES[:1] if (name in LEVEL_SOLVE_FORWARDS or form == "deep") else AUTODIFF_SHAPES:
        seed, batch, T, d_k, d_v, C, with_state = shape
        inp, do, dM_T = problem(name, var, seed, batch, T, d_k, d_v, True, form, C)
        want = witness(name, inp, do, dM_T, options(name, var), form, C)
        tol = max(FLOOR, 8 * max(condition(name, var, seed, batch, T, d_k, d_v, True, C, form), 1.0)
                  * growth(T, d_k, d_v) * U64)
        assert_same_gradients(vjp(name, form, inp, do, dM_T, C, var), want, tol, f"{name}/{form} vs autodiff {shape}")


# --------------------------------------------------------------------------- implicit steps: a second witness

# The implicit steps' forwards stop an iterative solve early (a data-dependent number of iterations): autodiff
# cannot go through them (JAX cannot trace the stopping test; torch would differentiate the iterations, not the
# minimiser). Their witness is JAX autodiff through a plain, fixed-length Newton polish of the stationarity
# condition, written here from the stated objective F of each step (refmem's computed minimiser, held constant,
# is the start): NEWTON_POLISH steps x <- x - H(x)^{-1} grad F(x). At a start within the solver's tolerance of
# the minimiser one step already carries the derivative -H^{-1} dG/dtheta of the implicit function theorem (the
# start's own derivative is zero, and G(x_0) is at the solver's tolerance); the second is taken from the first
# step's traced point. JAX differentiates F twice by itself: none of refmem's hand-written second derivatives.
NEWTON_POLISH = 2
# one small shape: JAX dispatches each operation of the polish on its own, batch entry by batch entry
IMPLICIT_WITNESS_SHAPE = (0, (1,), 3, 3, 2, 2, True)


def step_objective(name, jnp, opts):
    """``F(M; M_prev, k, v, gates_t)`` of one implicit step, plainly (MATH.md 1, 3, 4), for JAX."""
    if name == "moneta":
        p, q = 3.0, 4.0  # the forwards' defaults

        def psi(M):
            return 0.5 * jnp.sum(jnp.abs(M) ** q) ** (2 / q)

        def F(M, M_prev, k, v, alpha, eta):
            A = jax_grad(psi)(M_prev)
            return (jnp.sum(jnp.abs(M @ k - v) ** p)
                    + (psi(M) - alpha * (jnp.sum(A * (M - M_prev)) + psi(M_prev))) / eta)
        return F
    if name == "memora":
        a, c = 1.0, 1.0

        def F(M, M_prev, k, v, eta):
            d_k = M.shape[-1]
            return (0.5 * jnp.sum((M @ k - v) ** 2) + jnp.sum(M * (jnp.log(M) - jnp.log(M_prev))) / eta
                    + jnp.sum(M * (jnp.log(M) - jnp.log(c / d_k))) / a)
        return F
    if name == "deep_memory":
        act = jnp.tanh

        def F(W, W_prev, k, v, alpha, eta):
            W1, W2 = W
            r = k + W1 @ act(W2 @ k) - v
            return (0.5 * jnp.sum(r * r) + (jnp.sum((W1 - alpha * W_prev[0]) ** 2)
                                            + jnp.sum((W2 - alpha * W_prev[1]) ** 2)) / (2 * eta))
        return F
    raise KeyError(name)


def jax_grad(f):
    import jax

    return jax.grad(f)


def newton_polished_forward(name, inp, states, jnp):
    """The scan ``o_t = M_t q_t`` (deep: ``M_t(q_t)``) with each ``M_t`` the Newton polish of refmem's ``states[t]``.

    One batch entry at a time (``F`` is written for one problem). Memora's rows stay on the simplex: Newton on
    the Lagrangian with one multiplier per row (the KKT system), the row sums those of ``M_{t-1}``.
    """
    import jax

    F = step_objective(name, jnp, {})
    gates = ["eta"] if name == "memora" else ["alpha", "eta"]  # in the order F takes them
    deep = name == "deep_memory"
    flat = (lambda W: jnp.concatenate([W[0].ravel(), W[1].ravel()])) if deep else (lambda M: M.ravel())
    shape = (inp["initial_state"][0].shape[-2:], inp["initial_state"][1].shape[-2:]) if deep \
        else inp["initial_state"].shape[-2:]

    def unflat(x):
        if not deep:
            return x.reshape(shape)
        n1 = shape[0][0] * shape[0][1]
        return x[:n1].reshape(shape[0]), x[n1:].reshape(shape[1])

    def one(q, k, v, M0, gates_b, states_b):
        M_prev, outs = M0, []
        for t in range(k.shape[0]):
            g_t = [x[t] for x in gates_b]

            def f(x):
                return F(unflat(x), M_prev, k[t], v[t], *g_t)

            x = flat(jax.tree_util.tree_map(jax.lax.stop_gradient, states_b[t]))
            for _ in range(NEWTON_POLISH):
                G, H = jax.grad(f)(x), jax.hessian(f)(x)
                if name == "memora":  # KKT: [[H, B^T], [B, 0]] [dx; nu] = -[G; B x - s], rows of M_prev sum to s
                    rows, cols = shape
                    B = jnp.kron(jnp.eye(rows), jnp.ones((1, cols)))
                    K = jnp.block([[H, B.T], [B, jnp.zeros((rows, rows))]])
                    rhs = jnp.concatenate([G, B @ x - jnp.sum(M_prev, axis=-1)])
                    x = x - jnp.linalg.solve(K, rhs)[: rows * cols]
                else:
                    x = x - jnp.linalg.solve(H, G)
            M_prev = unflat(x)
            if deep:
                outs.append(q[t] + M_prev[0] @ jnp.tanh(M_prev[1] @ q[t]))
            else:
                outs.append(M_prev @ q[t])
        return jnp.stack(outs), M_prev

    return one, gates


@pytest.mark.skipif(not HAVE_JAX, reason="jax is not installed (refmem[jax])")
@pytest.mark.parametrize("name, form, var", IMPLICIT_CASES, ids=[f"{n}-{f}-{v}" for n, f, v in IMPLICIT_CASES])
def test_implicit_vjp_equals_jax_through_a_newton_polish(name, form, var):
    """The implicit steps' backward against JAX autodiff through :func:`newton_polished_forward` (the comment above).

    Both compute the implicit function theorem's derivative, at refmem's minimisers (the backward) and at their
    Newton polish (the witness), which differ by the solves' tolerance: the tolerance adds
    ``(T + 1) SOLVER_RTOL`` to the rounding term, both times the measured condition number.
    """
    seed, batch, T, d_k, d_v, C, _ = IMPLICIT_WITNESS_SHAPE
    inp, do, dM_T = problem(name, var, seed, batch, T, d_k, d_v, True, form, C)
    want = jax_newton_polish(name, inp, do, dM_T, var)
    kappa = max(condition(name, var, seed, batch, T, d_k, d_v, True, C, form), 1.0)
    tol = max(FLOOR, 8 * kappa * (growth(T, d_k, d_v) * U64 + (T + 1) * SOLVER_RTOL))
    assert_same_gradients(vjp(name, form, inp, do, dM_T, C, var), want, tol, f"{name}/{var} vs JAX Newton polish")


def jax_newton_polish(name, inp, do, dM_T, var):
    """The gradients of ``L`` by JAX autodiff through :func:`newton_polished_forward`, batch entry by batch entry."""
    import jax

    refmem.backends.get_backend("jax").namespace()  # switches on 64-bit mode
    import jax.numpy as jnp

    batch = inp["k"].shape[:-2]
    opts = options(name, var)
    states = refmem_states(name, inp, opts)
    one, gates = newton_polished_forward(name, inp, states, jnp)
    want = {key: [] for key in ("q", "k", "v", *gates, "initial_state")}
    for b in range(batch[0]):
        sel = lambda x: tree_map(lambda y: jnp.asarray(y[b]), x)  # noqa: E731
        args = [sel(inp["q"]), sel(inp["k"]), sel(inp["v"]), sel(inp["initial_state"]), [sel(inp[g]) for g in gates]]
        st = [sel(s) for s in states]

        def f(q, k, v, M0, gs):
            return one(q, k, v, M0, gs, st)

        _, pullback = jax.vjp(f, *args)
        dq, dk, dv, dM0, dgs = pullback((sel(do), sel(dM_T)))
        for key, x in zip(("q", "k", "v", "initial_state", *gates), (dq, dk, dv, dM0, *dgs)):
            want[key].append(tree_map(np.asarray, x))
    return {key: (tuple(np.stack([x[i] for x in xs]) for i in range(2)) if isinstance(xs[0], tuple)
                  else np.stack(xs)) for key, xs in want.items()}


def refmem_states(name, inp, opts):
    """refmem's computed states ``M_1 .. M_T`` of the implicit scan (each step's forward on the prefix ending there)."""
    spec = MEMORIES[name]
    T = inp["k"].shape[-2]
    out = []
    for t in range(1, T + 1):
        prefix = {key: (x[..., :t, :] if key in ("q", "k", "v") else x[..., :t]) if is_array(x) and key != "initial_state"
                  else x for key, x in inp.items()}
        out.append(spec.recurrent(**prefix, **opts)[1])
    return out


# --------------------------------------------------------------------------- structure, backends, bad input


def test_delta_rule_adjoint_is_a_delta_rule_run_backward():
    """With ``do = 0`` the adjoint obeys ``S_{t-1} = S_t - b_t (S_t k_t - 0) k_t^T``: dM_0 is the delta rule's
    final state over the reversed sequence, started at dM_T, with zero values (the docstring's claim)."""
    inp, _, dM_T = problem("delta_rule", "", 11, (2,), 7, 3, 2, True)
    do = np.zeros((2, 7, 2))
    dM0 = vjp("delta_rule", "recurrent", inp, do, dM_T, 1)["initial_state"]
    k_rev, b_rev = inp["k"][:, ::-1], inp["beta"][:, ::-1]
    S = dM_T.copy()
    for t in range(7):  # the delta rule, written out: S <- S - b (S k - 0) k^T
        kt = k_rev[:, t]
        S = S - b_rev[:, t, None, None] * np.einsum("bv,bk->bvk", np.einsum("bvk,bk->bv", S, kt), kt)
    _, via_memory = MEMORIES["delta_rule"].recurrent(inp["q"][:, ::-1], k_rev, np.zeros_like(inp["v"]), b_rev,
                                                      initial_state=dM_T)
    assert np.max(np.abs(dM0 - S)) <= 1e-13 and np.max(np.abs(dM0 - via_memory)) <= 1e-13


@pytest.mark.parametrize("name, form, var", CASES, ids=IDS)
def test_array_api_strict_equals_numpy(name, form, var):
    import array_api_strict as xps

    # the iterative variants solve every step (and condition() runs three backward passes): a smaller shape
    batch, T = ((1,), 3) if (name, var) in ITERATIVE_VARIANTS else ((2,), 6)
    inp, do, dM_T = problem(name, var, 5, batch, T, 3, 2, True, form, 4)
    want = vjp(name, form, inp, do, dM_T, 4, var)
    ls, rest = split(inp)
    conv = dict(rebuild(ls, [xps.asarray(x) for _, _, x in ls]), **rest)
    got = vjp(name, form, conv, xps.asarray(do), tree_map(xps.asarray, dM_T), 4, var)
    for key, part, g in leaves(got):
        assert type(g).__module__.startswith("array_api_strict"), f"d{key} left the backend"
    tol = max(FLOOR, 8 * max(condition(name, var, 5, batch, T, 3, 2, True, 4, form), 1.0) * growth(T, 3, 2) * U64)
    gl = leaves(got)
    assert_same_gradients(rebuild(gl, [np.asarray(g) for _, _, g in gl]), want, tol, f"{name}/{form} strict")


@pytest.mark.parametrize("name", sorted(BACKWARD))
def test_bad_cotangents_are_clear_errors(name):
    inp, do, dM_T = problem(name, "", 0, (2,), 4, 3, 2, False)
    f = BACKWARD[name].recurrent
    with pytest.raises(ValueError, match="do must have the shape of o"):
        f(**inp, do=do[:, :3], dM_T=dM_T)
    with pytest.raises(ValueError, match="dM_T must have the shape of the final state"):
        f(**inp, do=do, dM_T=tree_map(lambda x: x[..., :1], dM_T))
    with pytest.raises(TypeError, match="do must be an array"):
        f(**inp, do=None)
    with pytest.raises(TypeError, match="dtype"):
        f(**inp, do=do.astype(np.float32))
    if BACKWARD[name].chunked is not None:
        with pytest.raises(ValueError, match="chunk_size"):
            BACKWARD[name].chunked(**inp, do=do, chunk_size=0)
    if BACKWARD[name].minibatch is not None:
        with pytest.raises(ValueError, match="chunk_size"):
            BACKWARD[name].minibatch(**inp, do=do, chunk_size=0)
    grads = f(**inp, do=do)  # dM_T omitted: zero
    assert set(grads) == {key for key, _, _ in leaves(inp)} | {"initial_state", *EXTRA_STATES.get(name, ())}


def test_overflowing_gradient_is_a_divergence_error():
    inp, do, dM_T = problem("linear_attention", "", 0, (1,), 3, 2, 2, False)
    with np.errstate(all="ignore"), pytest.raises(DivergenceError, match="gradient in"):
        BACKWARD["linear_attention"].recurrent(**inp, do=do * 1e308, dM_T=dM_T * 1e308)


# forms of the registry whose backward is not written yet: (memory, form) -> what there is instead
BACKWARD_MISSING = {
}


def test_every_registry_memory_has_a_backward_for_every_form():
    """Walk MEMORIES: every memory has a backward, and one for each form it has (``BackwardSpec`` fields);
    a form without one is named in BACKWARD_MISSING, and nothing there has one (the list stays true)."""
    for name, spec in MEMORIES.items():
        assert spec.backward is not None, f"{name} has no backward pass"
        assert spec.backward.recurrent is not None
        for form in FORMS[1:]:
            has_form = getattr(spec, form) is not None
            has_backward = getattr(spec.backward, form) is not None
            if (name, form) in BACKWARD_MISSING:
                assert has_form and not has_backward, f"{name}/{form}: BACKWARD_MISSING is out of date"
            else:
                assert has_form == has_backward, f"{name}: form {form} {'without' if has_form else 'with'} a backward"
    for name, form in BACKWARD_MISSING:
        assert name in MEMORIES and form in FORMS


def test_dgd_backward_names_a_loss_it_cannot_differentiate():
    from refmem.losses import SquaredError

    class Cubic(SquaredError):
        name = "cubic"

    inp, do, _ = problem("dgd", "", 0, (1,), 3, 2, 2, False)
    with pytest.raises(ValueError, match="loss 'cubic' has no backward pass"):
        BACKWARD["dgd"].recurrent(**inp, do=do, loss=Cubic())


@pytest.mark.parametrize("activation", ["tanh", "silu"])
@pytest.mark.parametrize("bias", [ResidualLoss("l2"), ResidualLoss("huber", delta=0.5), ResidualLoss("lp", p=3.0)],
                         ids=["l2", "huber", "lp3"])
def test_mlp_hessian_vector_product_equals_central_differences(bias, activation):
    """``deep_loss_grad_vjp`` (second derivatives of the deep memory's loss, by hand) against central differences
    of ``phi = <G, grad_W l(W; k, v)>`` computed by the MLP's first-order backward; tolerance as above (measured
    Richardson truncation plus rounding ``growth u |phi|_abs / h``)."""
    from refmem.memories.residual_mlp import deep_loss_grad, deep_loss_grad_vjp

    g = np.random.default_rng(4)
    d, h = 3, 4
    args = [g.standard_normal((2, d, h)) / 2, g.standard_normal((2, h, d)) / 2, g.standard_normal((2, d)),
            g.standard_normal((2, d))]  # W1, W2, k, v
    G1, G2 = g.standard_normal((2, d, h)), g.standard_normal((2, h, d))
    got = deep_loss_grad_vjp(*args, bias, G1, G2, np, activation)

    def phi(W1, W2, k, v):
        _, g1, g2 = deep_loss_grad(W1, W2, k, v, bias, np, activation)
        return np.sum(G1 * g1) + np.sum(G2 * g2), np.sum(np.abs(G1 * g1)) + np.sum(np.abs(G2 * g2))

    delta = growth(1, d, h) * U64 * phi(*args)[1]
    for i, x in enumerate(args):
        def diff(step):
            fd = np.zeros_like(x)
            for idx in np.ndindex(x.shape):
                e = np.zeros_like(x)
                e[idx] = step
                fd[idx] = (phi(*[y + e if j == i else y for j, y in enumerate(args)])[0]
                           - phi(*[y - e if j == i else y for j, y in enumerate(args)])[0]) / (2 * step)
            return fd
        fd_h, fd_2h = diff(H), diff(2 * H)
        tol = 2 * np.abs(fd_2h - fd_h) / 3 + 2 * delta / H + FLOOR
        assert np.all(np.abs(got[i] - fd_h) <= tol), f"argument {i}: {np.max(np.abs(got[i] - fd_h)):.1e}"


def test_moneta_deep_default_start_has_no_gradient():
    """At Moneta's deep default start (``W1 = 0``, ``W2 = I``) an accumulator entry is exactly 0 where the lq link
    has an infinite slope: the backward refuses with the reason rather than return inf or nan; a central difference
    in an off-diagonal entry of ``W1``'s start grows without bound as the step shrinks (a cube root)."""
    from refmem.backward.deep_memory import moneta_deep_vjp

    spec = MEMORIES["moneta"]
    inp = dict(spec.make_inputs(0, (1,), 2, 2, 2, np, "float64"))
    o, (W1, W2) = spec.deep(**inp)
    do = np.random.default_rng(0).standard_normal(o.shape)
    with pytest.raises(ValueError, match="infinite slope"):
        moneta_deep_vjp(**inp, do=do)
    from refmem.memories.residual_mlp import default_params

    start = default_params((1,), 2, 2, np, np.float64)

    def fd(step):
        plus, minus = start[0].copy(), start[0].copy()
        plus[0, 0, 1] += step
        minus[0, 0, 1] -= step
        L = lambda W: float(np.sum(do * spec.deep(**inp, initial_state=(W, start[1]))[0]))  # noqa: E731
        return abs(L(plus) - L(minus)) / (2 * step)

    assert fd(1e-9) > 10 * fd(1e-5)  # no finite slope: the quotient keeps growing


def test_implicit_adjoint_solve_refuses_what_it_cannot_certify():
    """No gradient from a step whose Hessian is not positive definite (no strict minimiser) or too ill-conditioned."""
    from refmem.backward.implicit_steps import adjoint_solve
    from refmem.solvers import ConvergenceError

    S = np.random.default_rng(0).standard_normal((2, 3, 2))
    with pytest.raises(ConvergenceError, match="not positive definite"):
        adjoint_solve(lambda L: -L, S, np)
    scales = np.array([1.0, 1e-12]).reshape(1, 2)  # kappa = 1e12: 32 eps kappa = 7e-3 > sqrt(eps)
    with pytest.raises(ConvergenceError, match="cannot certify"):
        adjoint_solve(lambda L: L * scales, S, np)
    with pytest.raises(ConvergenceError, match="not finite"):
        adjoint_solve(lambda L: L + np.inf, S, np)


def test_implicit_adjoint_solve_on_zero_row_sums_is_the_kkt_solution():
    """On the simplex the adjoint solves ``H lam + nu 1^T = S`` with rows of ``lam`` summing to 0: the bordered
    (KKT) system, solved here densely by NumPy, gives the same ``lam`` and ``nu``."""
    from refmem.backward.implicit_steps import adjoint_solve

    g = np.random.default_rng(1)
    a, b = 3, 4
    n = a * b
    A = g.standard_normal((n, n))
    H = A @ A.T + n * np.eye(n)  # symmetric positive definite
    S = g.standard_normal((a, b))
    lam, nu = adjoint_solve(lambda L: (L.reshape(L.shape[:-2] + (n,)) @ H).reshape(L.shape), S, np,
                            simplex_rows=True)
    B = np.kron(np.eye(a), np.ones((1, b)))  # row sums
    K = np.block([[H, B.T], [B, np.zeros((a, a))]])
    x = np.linalg.solve(K, np.concatenate([S.ravel(), np.zeros(a)]))
    tol = 64 * n * U64 * np.linalg.cond(K)  # a backward-stable solve of each, relative
    assert np.max(np.abs(lam.ravel() - x[:n])) <= tol * np.max(np.abs(x[:n]))
    assert np.max(np.abs(nu - x[n:])) <= tol * np.max(np.abs(x))


@pytest.mark.parametrize("name", ["yaad", "moneta", "memora"])
def test_deep_miras_implicit_vjp_equals_central_differences(name):
    """The deep forms' implicit steps (each retention's second derivatives in the deep adjoint), on one small shape:
    central differences as for the iterative variants (fourth order, the step from the measured curvature, the
    solves' tolerance in the evaluation error); the options ride in the inputs (``central`` passes them on)."""
    seed, batch, T, d = 4, (1,), 2, 2  # seed 3 makes Moneta's solver stop at a saddle (the test below)
    inp, do, dM_T = problem(name, "", seed, batch, T, d, d, True, "deep")
    inp = dict(inp, **ITERATIVE)
    if "alpha" in inp:
        inp["alpha"] = np.minimum(inp["alpha"], 0.99)  # as gates_inside: four pilot steps stay in [0, 1]
    if name == "memora":  # simplex rows at least half uniform: four pilot steps keep them positive
        inp["initial_state"] = tuple(0.5 * W + 0.5 * np.mean(W, axis=-1, keepdims=True) for W in inp["initial_state"])
    grads = BACKWARD[name].deep(**inp, do=do, dM_T=dM_T)
    _, L_abs = loss(name, inp, do, dM_T, "", "deep")
    delta = (growth(T, d, d) * U64 + (T + 1) * SOLVER_RTOL) * float(L_abs)  # as evaluation_error
    for key, part, x in leaves(inp):
        pilot = ITERATIVE_PILOT * (float(np.max(np.abs(x))) if key == "eta" else 1.0)  # eta > 0: a relative step
        fd, tol, h = fourth_order_differences(name, inp, do, dM_T, key, pilot, delta, "", part, "deep")
        scale = max(1.0, float(np.max(np.abs(fd))))
        assert float(np.max(tol)) <= FD_CEILING * scale, f"{key}: FD tolerance {np.max(tol):.1e} is too loose"
        err = np.abs(np.asarray(leaf(grads, key, part)) - fd)
        assert np.all(err <= tol), f"{name} deep implicit d{key}[{part}]: err {np.max(err):.1e}, tol {np.min(tol):.1e}"


def test_deep_implicit_backward_refuses_a_saddle():
    """Moneta on the deep memory, implicit step: the forward's Newton solve stops where the step objective's gradient
    vanishes, which here is a saddle (the lq retention barely convexifies small weights, the loss is not convex). The
    backward refuses (no strict minimiser, no derivative); central differences of the stated objective's own
    gradient, independent of the hand-written Hessian, show the negative curvature there."""
    from refmem.backends import namespace_of
    from refmem.memories.deep_memory import deep_step, level_problem
    from refmem.memories.residual_mlp import deep_loss_grad, pack_weights
    from refmem.retentions.lq_moneta import LqMoneta
    from refmem.solvers import ConvergenceError

    inp, do, dM_T = problem("moneta", "", 3, (1,), 2, 2, 2, True, "deep")
    inp = dict(inp, **ITERATIVE)
    # newton_fd certifies a distance to a minimiser (MATH.md 1a), so the forward itself refuses the saddle now
    with pytest.raises(ConvergenceError, match="not positive definite|no certificate of the distance to the minimiser"):
        BACKWARD["moneta"].deep(**inp, do=do, dM_T=dM_T)
    W, k, v = inp["initial_state"], inp["k"][:, 0], inp["v"][:, 0]
    xp, bias = namespace_of(k), ResidualLoss("lp", p=3.0)
    ret = LqMoneta(q=4.0, alpha=inp["alpha"][:, 0], eta=inp["eta"][:, 0])
    try:
        W_1, _ = deep_step(W, k, v, retention=ret, loss=bias, step="implicit", method="iterative")  # the first step
    except ConvergenceError as exc:  # the saddle refused by the forward's certificate
        assert "no certificate of the distance to the minimiser" in str(exc)
        return
    prob = level_problem(*W, k, v, *deep_loss_grad(*W, k, v, bias, xp)[1:], ret.bind(xp, k.dtype), bias, "implicit",
                         "tanh", xp)
    X = pack_weights(*W_1, xp)
    n, h = X.size, 1e-5
    E = np.eye(n).reshape((n,) + X.shape)
    H = np.stack([((prob.grad(X + h * e) - prob.grad(X - h * e)) / (2 * h)).ravel() for e in E])
    # measured smallest eigenvalue -7.8; the differences' error (h^2 times the third derivative of the gradient,
    # about 1e-8 here) is far below 1
    assert np.linalg.eigvalsh(0.5 * (H + H.T))[0] < -1.0
