"""The largest gradient errors of every registered memory's backward passes against each witness.

    .venv/bin/python scripts/gradient_figures.py            # every memory
    .venv/bin/python scripts/gradient_figures.py titans     # only the named memories (all their forms)

For every (memory, form, variant) of ``tests/test_backward.py`` (the forms: recurrent, chunked,
mini-batch, deep) and the shapes of its autodiff check, the hand-written backward against:

- FD: central differences of refmem's forward (the test's steps; the fourth-order stencil at a step chosen
  from the measured curvature where the test takes it), ``max |vjp - fd| / max(1, max |fd|)``;
- JAX: JAX autodiff through refmem's own forward in float64, ``max |vjp - jax| / max |jax|`` per gradient;
  for the implicit steps solved iteratively, JAX autodiff through a fixed-length Newton polish of each
  step's stationarity condition (``test_implicit_vjp_equals_jax_through_a_newton_polish``);
- torch: the same with torch autograd (a dash when torch is not installed);
- chunked: the chunked backward against the recurrent backward, same relative error (chunked forms only).

Each column is the largest over the gradients (``dq, dk, dv``, every gate, the start state) and the
shapes. Takes several minutes (JAX dispatches every small operation of the forward on its own).
"""

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_backward import (AUTODIFF_SHAPES, CASES, CURVATURE_STEPPED, FD_STEPS, H, IMPLICIT_WITNESS_SHAPE,  # noqa: E402
                           ITERATIVE_VARIANTS,
                           LEVEL_SOLVE_FORWARDS, RELATIVE_STEPS, autodiff_jax, autodiff_torch, central,
                           evaluation_error, fourth_order_differences, jax_newton_polish, leaf, leaves, loss, options,
                           pilot_step, problem, to_numpy, vjp)

from refmem.metrics import rel_error  # noqa: E402

HAVE_JAX = importlib.util.find_spec("jax") is not None
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def relative_error(got, want):
    """Largest :func:`refmem.metrics.rel_error` (``max |got - want| / max |want|``) over the gradients of ``want``."""
    worst = 0.0
    for key, part, b in leaves(want):
        a, b = to_numpy(leaf(got, key, part)), np.asarray(b)
        if b.size:
            worst = max(worst, rel_error(a, b, np))
    return worst


def fd_error(name, form, var, inp, do, dM_T, C, grads):
    """Largest ``max |vjp - fd| / max(1, max |fd|)`` over the differentiable inputs."""
    worst = 0.0
    T, d_k, d_v = inp["k"].shape[-2], inp["k"].shape[-1], inp["v"].shape[-1]
    delta = evaluation_error(name, var, T, d_k, d_v, loss(name, inp, do, dM_T, var, form, C)[1])
    for key, part, x in leaves(inp):
        h = (RELATIVE_STEPS[name, key][form] * float(np.max(np.abs(x))) if (name, key) in RELATIVE_STEPS
             else FD_STEPS.get(name, H))
        if (name, form) in CURVATURE_STEPPED or (name, var) in ITERATIVE_VARIANTS:
            fd, _, _ = fourth_order_differences(name, inp, do, dM_T, key, pilot_step(name, key, x, var), delta, var,
                                                part, form, C)
        else:
            fd = central(name, inp, do, dM_T, key, h, var, part, form, C)
        got = np.asarray(leaf(grads, key, part))
        worst = max(worst, float(np.max(np.abs(got - fd))) / max(1.0, float(np.max(np.abs(fd)))))
    return worst


def row(name, form, var):
    errs = {"fd": 0.0, "jax": None, "torch": None, "chunked": None}
    shapes = AUTODIFF_SHAPES[:1] if (name in LEVEL_SOLVE_FORWARDS or form == "deep") else AUTODIFF_SHAPES
    if (name, var) in ITERATIVE_VARIANTS:  # the shape of their witness test
        shapes = [IMPLICIT_WITNESS_SHAPE]
    for seed, batch, T, d_k, d_v, C, _ in shapes:
        inp, do, dM_T = problem(name, var, seed, batch, T, d_k, d_v, True, form, C)
        grads = vjp(name, form, inp, do, dM_T, C, var)
        errs["fd"] = max(errs["fd"], fd_error(name, form, var, inp, do, dM_T, C, grads))
        iterative = (name, var) in ITERATIVE_VARIANTS
        if iterative and HAVE_JAX:  # autodiff cannot go through an iterative solve: the Newton-polish witness
            errs["jax"] = max(errs["jax"] or 0.0, relative_error(grads, jax_newton_polish(name, inp, do, dM_T, var)))
        for witness, have, key in ((autodiff_jax, HAVE_JAX, "jax"), (autodiff_torch, HAVE_TORCH, "torch")):
            if have and not iterative:
                e = relative_error(grads, witness(name, inp, do, dM_T, options(name, var), form, C))
                errs[key] = max(errs[key] or 0.0, e)
        if form == "chunked":
            e = relative_error(grads, vjp(name, "recurrent", inp, do, dM_T, C, var))
            errs["chunked"] = max(errs["chunked"] or 0.0, e)
    return errs


def main(names=()):
    fmt = lambda e: "-" if e is None else f"{e:.1e}"  # noqa: E731
    print(f"{'memory':<26}{'form':<11}{'variant':<15}{'FD':>9}{'JAX':>9}{'torch':>9}{'chunked':>9}{'s':>6}")
    for name, form, var in CASES:
        if names and name not in names:
            continue
        t0 = time.perf_counter()
        errs = row(name, form, var)
        print(f"{name:<26}{form:<11}{var or '-':<15}{fmt(errs['fd']):>9}{fmt(errs['jax']):>9}{fmt(errs['torch']):>9}"
              f"{fmt(errs['chunked']):>9}{time.perf_counter() - t0:>6.0f}", flush=True)


if __name__ == "__main__":
    unknown = sorted(set(sys.argv[1:]) - {name for name, _, _ in CASES})
    if unknown:
        sys.exit(f"gradient_figures.py: unknown memory {', '.join(unknown)}; expected some of "
                 f"{', '.join(sorted({name for name, _, _ in CASES}))}")
    main(tuple(sys.argv[1:]))
