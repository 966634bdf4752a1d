"""Solver options: every iterative solver and ``solve`` refuse a bad ``rtol`` / ``max_iter`` naming the option."""

import numpy as np
import pytest

from refmem import Level, solve
from refmem.level import problem
from refmem.objectives import L2
from refmem.retentions import ElasticNet, LocalL2
from refmem.solvers import SOLVERS

RNG = np.random.default_rng(3)
M_T = RNG.standard_normal((3, 2))
K = RNG.standard_normal(2)
V = RNG.standard_normal(3)

BAD_RTOL = [(True, TypeError), ("1e-8", TypeError), (None, TypeError), ([1e-8], TypeError),
            (0.0, ValueError), (-1e-8, ValueError), (1.0, ValueError), (5e4, ValueError),
            (float("nan"), ValueError), (float("inf"), ValueError)]
BAD_MAX_ITER = [(-1, ValueError), (1.5, TypeError), ("10", TypeError), (True, TypeError), (None, TypeError)]


def _problem_for(name):
    """A small problem the named solver accepts."""
    if name == "prox_grad" or name == "prox_grad_bt":
        return problem(Level(L2(), ElasticNet(eta=0.5, b=2.0, a=10.0)), M_T, K, V)
    if name == "residual_dual":
        from refmem.objectives import Lp
        return problem(Level(Lp(p=1.0), LocalL2(eta=0.5)), M_T, K, V)
    if name == "mirror_descent":
        from refmem.retentions import KLSimplex
        M = np.full((3, 2), 0.5)
        return problem(Level(L2(), KLSimplex(eta=0.5, a=1.0, c=1.0)), M, K, V)
    return problem(Level(L2(), LocalL2(eta=0.5)), M_T, K, V)


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize(("rtol", "error"), BAD_RTOL, ids=repr)
def test_every_solver_names_a_bad_rtol(name, rtol, error):
    with pytest.raises(error, match="rtol"):
        SOLVERS[name](_problem_for(name), rtol=rtol)


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize(("max_iter", "error"), BAD_MAX_ITER, ids=repr)
def test_every_solver_names_a_bad_max_iter(name, max_iter, error):
    if name == "cg" and max_iter is None:
        return  # None is conjugate_gradient's documented default (4 n + 20)
    with pytest.raises(error, match="max_iter"):
        SOLVERS[name](_problem_for(name), rtol=1e-10, max_iter=max_iter)


@pytest.mark.parametrize(("rtol", "error"), [r for r in BAD_RTOL if r[0] is not None], ids=repr)
def test_solve_names_a_bad_rtol(rtol, error):
    with pytest.raises(error, match="rtol"):
        solve(Level(L2(), LocalL2(eta=0.5)), M_T, K, V, method="iterative", rtol=rtol)


@pytest.mark.parametrize(("max_iter", "error"), [m for m in BAD_MAX_ITER if m[0] is not None], ids=repr)
@pytest.mark.parametrize("solver", ["cg", "gd", "gd-backtracking", "prox_grad"])
def test_solve_names_a_bad_max_iter(max_iter, error, solver):
    # max_iter=-1 used to end in UnboundLocalError inside CG, GD and proximal gradient
    with pytest.raises(error, match="max_iter"):
        solve(Level(L2(), LocalL2(eta=0.5)), M_T, K, V, method="iterative", solver=solver, max_iter=max_iter)


def test_solve_names_a_solver_that_is_not_a_name():
    with pytest.raises(TypeError, match="solver"):
        solve(Level(L2(), LocalL2(eta=0.5)), M_T, K, V, method="iterative", solver=3)


def test_numpy_scalars_are_valid_options():
    M, rep = solve(Level(L2(), LocalL2(eta=0.5)), M_T, K, V, method="iterative",
                   rtol=np.float64(1e-10), max_iter=np.int64(50))
    assert rep.converged and rep.tolerance == 1e-10


def test_max_iter_zero_checks_the_start_only():
    # at max_iter = 0 the solver may only test its start; M_t is not the minimiser here, so it must raise
    from refmem.solvers import ConvergenceError
    with pytest.raises(ConvergenceError):
        solve(Level(L2(), LocalL2(eta=0.5)), M_T, K, V, method="iterative", solver="gd", max_iter=0)


def _deep_inputs():
    g = np.random.default_rng(4)
    d, h = 3, 3
    return (0.3 * g.standard_normal((h, d)), 0.3 * g.standard_normal((d, h))), g.standard_normal(d), g.standard_normal(d)


@pytest.mark.parametrize(("option", "value", "error"), [("rtol", "1e-8", TypeError), ("rtol", True, TypeError),
                                                        ("rtol", 5e4, ValueError), ("max_iter", -1, ValueError),
                                                        ("max_iter", 1.5, TypeError)])
def test_deep_step_goes_through_the_same_dispatch(option, value, error):
    # the deep memory's step used its own solver dispatch (no option checks, no certified tolerance)
    from refmem.memories.deep_memory import deep_step
    params, k, v = _deep_inputs()
    with pytest.raises(error, match=option):
        deep_step(params, k, v, retention=LocalL2(0.5), step="implicit", method="iterative", **{option: value})


def test_deep_step_refuses_an_uncertifiable_tolerance():
    from refmem.memories.deep_memory import deep_step
    from refmem.solvers import ConvergenceError
    params, k, v = _deep_inputs()
    with pytest.raises(ConvergenceError, match="cannot certify"):
        deep_step(params, 1e6 * k, v, retention=LocalL2(1e12), step="implicit", method="iterative")
