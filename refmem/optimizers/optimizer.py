r"""What every optimiser shares: the ``init`` / ``step`` interface and its input checks.

An optimiser (Nested Learning, NL 2.3; arXiv 2512.24695, NLx 4) is a stack of
levels. Each level is an associative memory whose update solves a small
stated problem; the weights ``W`` are the slowest level and read the others.
:class:`Optimizer` fixes one interface for all of them:

- ``init(W) -> state``: the state of every level, for weights ``W`` of shape
  ``[..., d_out, d_in]`` (a matrix or a batch of matrices);
- ``step(W, g, state, *, method="closed" | "iterative") -> (W, state, reports)``:
  one step with gradient ``g`` (the shape of ``W``); ``reports`` maps each
  level's name to its :class:`~refmem.solvers.SolveReport`.

``method="closed"`` solves every level in closed form; ``method="iterative"``
solves every level by an iterative solver that minimises the level's stated
objective and knows nothing of the closed form. Hyperparameters are Python
numbers with torch.optim's names, defaults and conventions.

A step whose result is not finite raises :class:`~refmem.validation.DivergenceError`
(one device read, switched off with the other reads by
``refmem.options(check_finite=False)``); so does a step whose intermediates overflow
(:func:`overflow_checked_step`: e.g. a second moment ``g * g`` of gradients above
``1e154``, which no state of the format can hold), instead of a NumPy warning.
"""

from __future__ import annotations

import functools
import math
from numbers import Real

from ..level import Level, solve
from ..objectives import Inner
from ..retentions import ForgetGate
from ..solvers import SolveReport
from ..validation import (DivergenceError, check_arrays, check_ndim, check_nonempty, get_option, magnitudes,
                          overflow_raises, require, same_dtype)

METHODS = ("closed", "iterative")


class Optimizer:
    """Base class: hyperparameters in ``__init__``, the levels in ``init`` and ``step``.

    Subclasses set ``name`` and implement ``init`` and ``step``; the
    hyperparameters they were made with are in :attr:`hyperparameters`.
    """

    name = "optimizer"

    def __init__(self, **hyperparameters):
        self.hyperparameters = dict(hyperparameters)

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"{type(self).__name__}({hp})"

    def init(self, W):  # pragma: no cover - every registered optimiser overrides it
        raise NotImplementedError

    def check_step(self, W, g, state, state_type, method: str, *state_arrays: str):
        """The checks every ``step`` starts with; returns ``xp``.

        ``method`` is one of :data:`METHODS`; ``W`` and ``g`` share namespace,
        dtype and shape ``[..., d_out, d_in]`` (:func:`check_step_inputs`);
        ``state`` is the ``state_type`` that ``init`` makes; each field named
        in ``state_arrays`` has the shape and dtype of ``W``.
        """
        check_method(method)
        xp = check_step_inputs(W, g)
        check_state_type(state, state_type, self.name)
        for what in state_arrays:
            check_state_shape(getattr(state, what), W, what)
        return xp

    def step(self, W, g, state, *, method="closed"):  # pragma: no cover
        raise NotImplementedError

    def check_finite(self, xp, **arrays) -> None:
        """:func:`check_finite_result` under this optimiser's name."""
        check_finite_result(self.name, xp, **arrays)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    return method


def check_weights(W, name: str = "W"):
    """``W`` an array ``[..., d_out, d_in]`` of a real floating dtype, finite; returns ``xp``."""
    xp = check_arrays(**{name: W})
    check_ndim(W, name, 2, "[..., d_out, d_in]")
    check_nonempty(W, name)
    return xp


def check_step_inputs(W, g):
    """``W`` and ``g`` share namespace, dtype and shape ``[..., d_out, d_in]``; both finite. Returns ``xp``."""
    require(W=W, g=g)
    xp = check_arrays(W=W, g=g)
    check_ndim(W, "W", 2, "[..., d_out, d_in]")
    check_nonempty(W, "W")
    if tuple(g.shape) != tuple(W.shape):
        raise ValueError(f"g must have the shape of W {tuple(W.shape)}; got {tuple(g.shape)}")
    return xp


def check_state_shape(state_array, W, what: str) -> None:
    """A state array made by ``init`` for another shape is a clear error, not a broadcast."""
    if tuple(state_array.shape) != tuple(W.shape) or not same_dtype(state_array.dtype, W.dtype):
        raise ValueError(f"state.{what} has shape {tuple(state_array.shape)} and dtype {state_array.dtype}, "
                         f"but W has shape {tuple(W.shape)} and dtype {W.dtype}: make the state with init(W)")


def overflow_checked_step(step):
    """Decorator for an optimiser's ``step``: an overflow inside is a :class:`DivergenceError`, not a warning.

    The error names the optimiser and the sizes of ``W`` and ``g``
    (:func:`refmem.validation.overflow_raises`); the state is left as it was.
    """

    @functools.wraps(step)
    def checked(self, W, g, state, *, method="closed"):
        def overflow():
            return DivergenceError(f"{self.name}: the step overflows the floating-point range for these inputs "
                                   f"({magnitudes(W=W, g=g)}); rescale the gradient or the weights; "
                                   "no result is returned")

        with overflow_raises(overflow):
            return step(self, W, g, state, method=method)

    return checked


def check_finite_result(name: str, xp, **arrays) -> None:
    """Raise :class:`DivergenceError` naming the first non-finite result (no silent nan)."""
    if not get_option("check_finite"):
        return
    for what, a in arrays.items():
        if a is not None and not bool(xp.all(xp.isfinite(a))):
            raise DivergenceError(f"{name}: the new {what} contains non-finite values (overflow, or a division by "
                                  "a zero denominator such as eps = 0 with a zero gradient); no result is returned")


def real_hyperparameter(value, name: str, *, low=None, high=None, low_open=False, high_open=False) -> float:
    """A hyperparameter as a Python float, checked against its interval (errors name it)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite; got {v}")
    bad = (low is not None and (v <= low if low_open else v < low)) or (
        high is not None and (v >= high if high_open else v > high))
    if bad:
        lo = ("(" if low_open else "[") + ("-inf" if low is None else f"{low}")
        hi = ("inf" if high is None else f"{high}") + (")" if high_open else "]")
        raise ValueError(f"{name} must lie in {lo}, {hi}; got {v}")
    return v


def int_hyperparameter(value, name: str, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an int in [{low}, {'inf' if high is None else high}]; got {value}")
    return value


def bool_hyperparameter(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {type(value).__name__} {value!r}")
    return value


def pair_of_betas(betas, name: str = "betas", n: int = 2) -> tuple:
    """``n`` decay rates, each in ``[0, 1)``, as a tuple of floats."""
    if not isinstance(betas, (tuple, list)) or len(betas) != n:
        raise TypeError(f"{name} must be a tuple of {n} real numbers in [0, 1); got {betas!r}")
    return tuple(real_hyperparameter(b, f"{name}[{i}]", low=0.0, high=1.0, high_open=True) for i, b in enumerate(betas))


def fixed_map_report(name: str) -> SolveReport:
    """Report for a step that solves no problem (a fixed map, e.g. Muon's quintic Newton-Schulz)."""
    return SolveReport(method="fixed map", solver=name, iterations=0)


def closed_report(name: str) -> SolveReport:
    return SolveReport(method="closed", solver=name, iterations=0)


def descent_level(lr: float, keep: float = 1.0):
    r"""The weights' level: :math:`W_{t+1} = \operatorname{argmin}_W \langle W, d\rangle + \frac{1}{2\,\mathrm{lr}}\|W - \kappa W_t\|^2`.

    ``d`` is the direction the faster levels hand up (a moment, an
    orthogonalised momentum, ...); ``keep`` :math:`\kappa = 1 - \mathrm{lr}\,\lambda`
    is decoupled weight decay (AdamW, Muon) as a forget gate on the weights.
    Closed form :math:`\kappa W_t - \mathrm{lr}\, d`.
    """
    return Level(Inner(), ForgetGate(eta=lr, alpha=keep), step="implicit", name="weights")


def descent_step(W, d, lr: float, keep: float = 1.0, *, method: str = "closed"):
    """Solve :func:`descent_level` for direction ``d``; returns ``(W, SolveReport)``."""
    return solve(descent_level(lr, keep), W, None, -d, method=method)  # Inner's value is -d: l = <W, d>


def divide_by_denominator(num, den, name: str, xp):
    """``num / den`` for a preconditioner ``den >= 0`` (``sqrt(v) + eps``); a zero entry is a clear error, not nan."""
    if get_option("check_finite") and bool(xp.any(den == 0)):
        raise DivergenceError(f"{name}: a denominator sqrt(v) + eps is zero (eps = 0 and a zero second moment); "
                              "use eps > 0")
    return num / den  # (.., d_out, d_in)


def check_state_type(state, cls, name: str) -> None:
    """The state must be the one ``init`` of this optimiser made (a foreign state is a TypeError, not an AttributeError)."""
    if not isinstance(state, cls):
        raise TypeError(f"state must be the {cls.__name__} that {name}'s init(W) returns; got {type(state).__name__}")
