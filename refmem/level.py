r"""A level: one associative memory updated by a small proximal problem (Nested Learning; MATH.md 1).

.. math::

    M_{t+1} = \operatorname*{argmin}_M\; l(M; k_t, v_t) + \mathrm{Ret}(M, M_t) \qquad (P)

A :class:`Level` names the objective ``l``, the retention ``Ret`` (which holds
the step size and gates) and the step kind:

- ``"explicit"``: ``l`` replaced by its linearisation at ``M_t`` (or at the
  retained state, e.g. ``alpha M_t`` for the gated delta rule): with the local
  l2 retention this is one gradient step (NLx-2);
- ``"implicit"``: (P) with the true ``l`` (a proximal-point step).

:func:`solve` computes the new state either in closed form or by an iterative
solver that minimises the same stated objective and knows nothing of the
closed form. The two must agree; the property tests and ``refmem verify``
check that they do.
"""

from __future__ import annotations

from dataclasses import dataclass

from .linalg import broadcast_like, inner
from .objectives import Objective
from .retentions import Retention
from .solvers import Problem, SolveReport
from .solvers.dispatch import minimize
from .solvers.options import check_count, check_rtol
from .solvers.residual_dual import ResidualDual
from .solvers import ConvergenceError
from .validation import (DivergenceError, check_arrays, check_ndim, check_nonempty, get_option, magnitudes,
                         overflow_raises, require)

STEPS = ("explicit", "implicit")
LINEARIZE_AT = ("state", "retained")


class ClosedFormUnavailable(LookupError):
    """A (objective, retention, step) combination has no known closed form; use ``method="iterative"``."""


@dataclass(frozen=True)
class Level:
    """One level of a nested memory.

    Parameters
    ----------
    objective : Objective
        The attentional bias ``l(M; k, v)``.
    retention : Retention
        ``Ret(M, M_t)``, holding the step size ``eta`` and any gates.
    step : {"implicit", "explicit"}
    linearize_at : {"state", "retained"}
        Where an explicit step takes its gradient: at ``M_t`` (default) or at
        the retained state (``alpha M_t`` under a forget gate: the gated delta rule).
    name : str
        Optional label used in reports.

    Examples
    --------
    The delta rule's step: the l2 objective, local l2 retention with step size
    ``eta``, taken explicitly (:func:`solve` shows it is one gradient step on
    ``1/2 ||M k - v||^2``):

    >>> from refmem import Level
    >>> from refmem.objectives import L2
    >>> from refmem.retentions import LocalL2
    >>> level = Level(L2(), LocalL2(eta=0.1), step="explicit")
    >>> level.step, level.retention.eta
    ('explicit', 0.1)
    """

    objective: Objective
    retention: Retention
    step: str = "implicit"
    linearize_at: str = "state"
    name: str = ""

    def __post_init__(self):
        if not isinstance(self.objective, Objective):
            raise TypeError(f"objective must be an Objective instance; got {type(self.objective).__name__}")
        if not isinstance(self.retention, Retention):
            raise TypeError(f"retention must be a Retention instance; got {type(self.retention).__name__}")
        if self.step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}; got {self.step!r}")
        if self.linearize_at not in LINEARIZE_AT:
            raise ValueError(f"linearize_at must be one of {LINEARIZE_AT}; got {self.linearize_at!r}")

    @property
    def label(self) -> str:
        return self.name or f"{self.objective.name}/{self.retention.name}/{self.step}"


def _check_inputs(level: Level, M_t, k, v):
    """Validate shapes, dtypes, finiteness and parameters; return ``(xp, bound retention)``."""
    keyless = getattr(level.objective, "keyless", False)
    require(M_t=M_t, v=v)
    if keyless:
        if k is not None:
            raise ValueError(f"k must be None for the key-less objective {level.objective.name!r}; pass the matrix as v")
        xp = check_arrays(M_t=M_t, v=v)
    else:
        if k is None:
            raise ValueError(f"k is required for objective {level.objective.name!r}")
        xp = check_arrays(M_t=M_t, k=k, v=v)
    check_ndim(M_t, "M_t", 2, "[..., d_v, d_k]")
    for name, x in (("M_t", M_t), ("k", k), ("v", v)):
        if x is not None:
            check_nonempty(x, name)
    d_v, d_k = M_t.shape[-2], M_t.shape[-1]
    if keyless:
        check_ndim(v, "v", 2, "[..., d_v, d_k] (a matrix like the state)")
        if tuple(v.shape[-2:]) != (d_v, d_k):
            raise ValueError(f"v must end in the shape of the state M_t ({d_v}, {d_k}); got shape {tuple(v.shape)}")
        batch, batch_names = [M_t.shape[:-2], v.shape[:-2]], ("M_t", "v")
    else:
        w = 1 if getattr(level.objective, "windowed", False) else 0  # windowed objectives: c samples per problem
        check_ndim(k, "k", 1 + w, "[..., c, d_k]" if w else "[..., d_k]")
        check_ndim(v, "v", 1 + w, "[..., c, d_v]" if w else "[..., d_v]")
        if w and k.shape[-2] != v.shape[-2]:
            raise ValueError(f"k and v must hold the same number of samples c; got k {tuple(k.shape)}, v {tuple(v.shape)}")
        if k.shape[-1] != d_k:
            raise ValueError(f"k has length {k.shape[-1]} but M_t has d_k = {d_k} (M_t is [..., d_v, d_k])")
        if v.shape[-1] != d_v:
            raise ValueError(f"v has length {v.shape[-1]} but M_t has d_v = {d_v} (M_t is [..., d_v, d_k])")
        batch, batch_names = [M_t.shape[:-2], k.shape[:-1 - w], v.shape[:-1 - w]], ("M_t", "k", "v")
    _check_broadcast(batch, batch_names)
    level.objective.check_inputs(k, v, xp)  # e.g. the windowed objective's weights gamma
    ret = level.retention.bind(xp, M_t.dtype)
    for name, trailing in ret.batch_parameters.items():  # a batched eta or alpha must fit the problems' batch
        shape = tuple(getattr(getattr(ret, name, None), "shape", ()))
        if len(shape) > trailing:
            _check_broadcast(batch + [shape[:len(shape) - trailing]], names=batch_names + (name,))
    ret.check_state(M_t, xp)  # e.g. a simplex retention needs M_t on its simplex
    return xp, ret


def _check_broadcast(shapes, names=("M_t", "k", "v")):
    out: list[int] = []
    for s in shapes:
        s = tuple(s)
        n = max(len(out), len(s))
        a = [1] * (n - len(out)) + out
        b = [1] * (n - len(s)) + list(s)
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y and 1 not in (x, y):
                raise ValueError(f"batch shapes of {', '.join(names)} do not broadcast: {[tuple(t) for t in shapes]}")
            a[i] = max(x, y)
        out = a


def linearization_point(level: Level, ret: Retention, M_t, xp):
    """``M_t``, or the retained state when the level says so."""
    return M_t if level.linearize_at == "state" else ret.retained(M_t, xp)


def closed_form(level: Level, M_t, k, v):
    """The closed-form new state of ``level`` (no validation; see :func:`solve`)."""
    xp, ret = _check_inputs(level, M_t, k, v)
    return _closed(level, ret, M_t, k, v, xp)


def _closed(level, ret, M_t, k, v, xp):
    if level.step == "explicit":
        g = level.objective.grad(linearization_point(level, ret, M_t, xp), k, v, xp)
        return ret.explicit_step(M_t, g, xp)
    M = ret.implicit_step(level.objective, M_t, k, v, xp)
    if M is None:
        raise ClosedFormUnavailable(
            f"no closed form for the implicit step of {level.objective.name} under {ret.name}; use method='iterative'"
        )
    return M


def problem(level: Level, M_t, k, v, *, bound_retention=None, xp=None) -> Problem:
    r"""The stated objective of (P) as a :class:`~refmem.solvers.Problem` for the iterative solvers.

    Explicit: :math:`F(M) = \langle g, M\rangle + \mathrm{Ret}(M, M_t)` with ``g`` the
    gradient at the linearisation point. Implicit: :math:`F(M) = l(M) + \mathrm{Ret}(M, M_t)`.
    The starting point is ``M_t``.
    """
    if bound_retention is None:
        xp, bound_retention = _check_inputs(level, M_t, k, v)
    ret, obj = bound_retention, level.objective
    if level.step == "explicit":
        g = obj.grad(linearization_point(level, ret, M_t, xp), k, v, xp)

        def f(M):
            return inner(g, M, xp) + ret.value(M, M_t, xp)

        def df(M):
            return g + ret.grad(M, M_t, xp)

        L = ret.lipschitz(xp)
        quadratic = True
    else:

        def f(M):
            return obj.value(M, k, v, xp) + ret.value(M, M_t, xp)

        def df(M):
            return obj.grad(M, k, v, xp) + ret.grad(M, M_t, xp)

        L = obj.lipschitz(k, xp) + ret.lipschitz(xp)
        quadratic = obj.quadratic
    quadratic = quadratic and ret.prox is None and getattr(ret, "quadratic", True)
    x0 = broadcast_like(M_t, df(M_t), xp)  # broadcast the start to the full batch shape of the problem
    prob = Problem(xp, x0, f, df, L, ret.mu(xp), ret.prox, ret.h_value, quadratic,
                   preferred_solver=_preferred_solver(level, ret))
    if level.step == "implicit" and getattr(obj, "conjugate", None) is not None:
        prob.dual = ResidualDual(k, v, obj.conjugate(xp), lambda W: ret.explicit_step(M_t, W, xp),
                                 lambda M: ret.total_value(M, M_t, xp), ret.lipschitz(xp), M_t, ret.mu(xp),
                                 getattr(ret, "preferred_solver", None))
    return prob


def _preferred_solver(level: Level, ret: Retention):
    """A non-smooth objective's solver (implicit step) first, then the retention's, then a smooth objective's."""
    obj_pref = getattr(level.objective, "preferred_solver", None) if level.step == "implicit" else None
    if obj_pref is not None and not getattr(level.objective, "smooth", True):
        return obj_pref
    return getattr(ret, "preferred_solver", None) or obj_pref


def solve(level: Level, M_t, k, v, *, method: str = "closed", solver: str | None = None,
          rtol: float | None = None, max_iter: int | None = None):
    """Solve one level's update (P).

    Parameters
    ----------
    level : Level
    M_t : array ``[..., d_v, d_k]``
        Current state.
    k : array ``[..., d_k]`` or None
        Key (``None`` for key-less objectives).
    v : array ``[..., d_v]`` (or ``[..., d_v, d_k]`` for key-less objectives)
        Value.
    method : {"closed", "iterative"}
    solver : str, optional
        Iterative solver: ``"cg"``, ``"gd"``, ``"gd-backtracking"``, ``"prox_grad"``,
        ``"prox_grad_bt"``, ``"residual_dual"``, ``"mirror_descent"``;
        default chosen from the problem (:func:`~refmem.solvers.dispatch.default_solver`).
    rtol : float in (0, 1), optional
        Relative optimality tolerance; default :func:`~refmem.solvers.default_rtol`, raised to
        the rounding floor ``32 eps kappa`` but never past ``sqrt(eps)``
        (:func:`~refmem.solvers.dispatch.certified_rtol`).
    max_iter : int >= 0, optional

    Returns
    -------
    M : array ``[..., d_v, d_k]``
        New state, same array type and dtype as the inputs.
    report : SolveReport

    Raises
    ------
    ValueError, TypeError
        Bad inputs, naming the argument.
    ClosedFormUnavailable
        ``method="closed"`` for a combination without a closed form.
    ConvergenceError
        The iterative solver did not meet its tolerance, the tolerance cannot be
        certified at the problem's conditioning (the message gives the condition estimate),
        or the stated objective overflows for these inputs.
    DivergenceError
        The closed form overflows the floating-point range for these inputs (an
        intermediate or the result; the message gives the inputs' magnitudes).

    Examples
    --------
    The implicit l2 step, once in closed form (Sherman-Morrison) and once by
    conjugate gradient on the stated objective:

    >>> import numpy as np
    >>> from refmem import Level, solve
    >>> from refmem.objectives import L2
    >>> from refmem.retentions import LocalL2
    >>> rng = np.random.default_rng(0)
    >>> M_t = rng.standard_normal((3, 4))          # state [d_v, d_k]
    >>> k, v = rng.standard_normal(4), rng.standard_normal(3)
    >>> level = Level(L2(), LocalL2(eta=0.5), step="implicit")
    >>> M, report = solve(level, M_t, k, v)
    >>> M_it, it_report = solve(level, M_t, k, v, method="iterative")
    >>> report.method, it_report.method, it_report.solver, it_report.converged
    ('closed', 'iterative', 'cg', True)
    >>> bool(np.max(np.abs(M - M_it)) <= 1e-10 * np.max(np.abs(M)))
    True

    The explicit step is one gradient step on ``1/2 ||M k - v||^2`` (the delta rule):

    >>> M, _ = solve(Level(L2(), LocalL2(eta=0.1), step="explicit"), M_t, k, v)
    >>> bool(np.allclose(M, M_t - 0.1 * np.outer(M_t @ k - v, k)))
    True
    """
    if method not in ("closed", "iterative"):
        raise ValueError(f"method must be 'closed' or 'iterative'; got {method!r}")
    if solver is not None and not isinstance(solver, str):
        raise TypeError(f"solver must be a solver name (str) or None; got {type(solver).__name__}")
    if rtol is not None:
        check_rtol(rtol)
    if max_iter is not None:
        check_count(max_iter, "max_iter")
    xp, ret = _check_inputs(level, M_t, k, v)
    name = f"{level.objective.name}/{ret.name}/{level.step}"
    if method == "closed":
        with overflow_raises(lambda: _closed_form_overflow(name, M_t, k, v)):
            M = _closed(level, ret, M_t, k, v, xp)
        if get_option("check_finite") and not bool(xp.all(xp.isfinite(M))):  # backends that do not signal it
            raise _closed_form_overflow(name, M_t, k, v)
        return M, SolveReport("closed", name)
    with overflow_raises(lambda: _iterative_overflow(name, solver, M_t, k, v)):
        prob = problem(level, M_t, k, v, bound_retention=ret, xp=xp)
        return minimize(prob, solver=solver, rtol=rtol, max_iter=max_iter)


def _closed_form_overflow(name, M_t, k, v) -> DivergenceError:
    return DivergenceError(f"solve: the closed form {name} overflows the floating-point range for these inputs "
                           f"({magnitudes(M_t=M_t, k=k, v=v)}); rescale M_t, k or v; no result is returned")


def _iterative_overflow(name, solver, M_t, k, v) -> ConvergenceError:
    report = SolveReport("iterative", solver or "any", 0, float("inf"), float("nan"), False)
    return ConvergenceError(report, f"the stated objective of {name} (its value, gradient or curvature) overflows "
                                    f"the floating-point range for these inputs ({magnitudes(M_t=M_t, k=k, v=v)}); "
                                    "rescale M_t, k or v")
