r"""Deep momentum gradient descent (DMGD, NL-23; NLx 4; MATH.md 6): the momentum is an MLP.

.. math::

    W_{i+1} = W_i + m_{\theta_{i+1}}(u_i), \qquad
    \theta_{i+1} = \alpha\,\theta_i - \eta\, \nabla_\theta \mathcal{L}^{(2)}(\theta_i; u_i),
    \qquad u_i = \nabla_W \mathcal{L}(W_i; x_i) .

refmem's one documented choice for the memory and its objective (the paper
leaves both open; its example is a dot-product objective):

- the memory acts on each row ``u_r`` (``d_in``) of the gradient ``u`` ``[..., d_out, d_in]``:
  :math:`m_\theta(u) = \tanh(u A_1^T)\, A_2^T`, :math:`\theta = (A_1 [h, d_\text{in}], A_2 [d_\text{in}, h])`;
- the objective is the dot product of the read-out with the gradient (NL-21 with ``P = I``,
  read through the memory): :math:`\mathcal{L}^{(2)}(\theta; u) = \langle m_\theta(u), u\rangle`,
  which gradient descent lowers by turning the read-out against the gradient (a descent direction for ``W``).

Hand-written gradient (checked against finite differences in the tests), with
:math:`Z = u A_1^T`, :math:`H = \tanh Z`:

.. math::

    \nabla_{A_2} = u^T H, \qquad
    \nabla_{A_1} = \big((u A_2) \odot (1 - H^2)\big)^T u .

The memory's problem has no closed form (the MLP makes it non-convex): the
level is solved **iteratively only**, by the one gradient step above (as the
paper states it); ``method="closed"`` raises
:class:`~refmem.level.ClosedFormUnavailable`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np  # drawing the memory's initial weights only

from ..backends import namespace_of
from ..level import ClosedFormUnavailable
from ..solvers import SolveReport
from .optimizer import (Optimizer, check_weights, int_hyperparameter, overflow_checked_step,
                        real_hyperparameter)


def read_out(A1, A2, u):
    r""":math:`m_\theta(u) = \tanh(u A_1^T) A_2^T` ``[..., d_out, d_in]``."""
    xp = namespace_of(u)
    H = xp.tanh(u @ xp.matrix_transpose(A1))  # (.., d_out, h)
    return H @ xp.matrix_transpose(A2)  # (.., d_out, d_in)


def memory_objective(A1, A2, u):
    r""":math:`\mathcal{L}^{(2)}(\theta; u) = \langle m_\theta(u), u\rangle` per matrix ``[...]``."""
    xp = namespace_of(u)
    return xp.sum(read_out(A1, A2, u) * u, axis=(-2, -1))  # (..,)


def memory_objective_gradient(A1, A2, u):
    r"""Hand-written :math:`(\nabla_{A_1}, \nabla_{A_2})` of :func:`memory_objective`."""
    xp = namespace_of(u)
    H = xp.tanh(u @ xp.matrix_transpose(A1))  # (.., d_out, h)
    dA2 = xp.matrix_transpose(u) @ H  # (.., d_in, h): out = H A2^T, dL/dout = u
    dZ = (u @ A2) * (1.0 - H * H)  # (.., d_out, h): dL/dH = u A2, tanh' = 1 - H^2
    dA1 = xp.matrix_transpose(dZ) @ u  # (.., h, d_in)
    return dA1, dA2


@dataclass(frozen=True)
class DeepMomentumState:
    """``step`` and the memory's weights ``A1`` ``[..., h, d_in]``, ``A2`` ``[..., d_in, h]``."""

    step: int
    A1: object
    A2: object


def check_memory_fits(batch: tuple, hidden: int, d_in: int, itemsize: int) -> None:
    """Refuse, before allocating, a memory MLP whose weights would not fit in the memory this process has.

    ``A1 [.., hidden, d_in]`` and ``A2 [.., d_in, hidden]`` in ``W``'s dtype, each drawn
    first in float64 by NumPy: ``2 B hidden d_in (itemsize + 8)`` bytes. The available
    memory is :func:`refmem.bench.available_memory_bytes` (no check where it is unknown).
    """
    from ..bench import available_memory_bytes

    need = 2 * math.prod(batch) * hidden * d_in * (itemsize + 8)
    have = available_memory_bytes()
    if have is not None and need > have:
        raise ValueError(f"hidden = {hidden} would need {need / 2**30:.3g} GiB for the memory's weights A1 "
                         f"[.., hidden, d_in] and A2 [.., d_in, hidden] of W (d_in = {d_in}, batch {batch}); "
                         f"{have / 2**30:.3g} GiB are available: use a smaller hidden")


class DeepMomentum(Optimizer):
    r"""DMGD (NL-23): an MLP momentum trained by one gradient step per step on its own objective.

    Parameters
    ----------
    lr : float, default 1e-3
        :math:`\eta`, the memory's step.
    momentum : float, default 0.9
        :math:`\alpha`, the memory's decay, in ``[0, 1]``.
    hidden : int, default 16
    init_scale : float, default 0.1
        Standard deviation of the memory's initial weights.
    seed : int, default 0
        Seed of the initial weights (drawn with NumPy, then moved to ``W``'s backend).
    """

    name = "deep_momentum"

    def __init__(self, lr=1e-3, momentum=0.9, hidden=16, init_scale=0.1, seed=0):
        super().__init__(lr=real_hyperparameter(lr, "lr", low=0.0, low_open=True),
                         momentum=real_hyperparameter(momentum, "momentum", low=0.0, high=1.0),
                         hidden=int_hyperparameter(hidden, "hidden", low=1),
                         init_scale=real_hyperparameter(init_scale, "init_scale", low=0.0),
                         seed=int_hyperparameter(seed, "seed", low=0))

    def init(self, W) -> DeepMomentumState:
        xp = check_weights(W)
        hp = self.hyperparameters
        batch, d_in, h = tuple(W.shape[:-2]), W.shape[-1], hp["hidden"]
        check_memory_fits(batch, h, d_in, xp.finfo(W.dtype).bits // 8)
        rng = np.random.default_rng(hp["seed"])
        A1 = xp.asarray(hp["init_scale"] * rng.standard_normal(batch + (h, d_in)), dtype=W.dtype)  # (.., h, d_in)
        A2 = xp.asarray(hp["init_scale"] * rng.standard_normal(batch + (d_in, h)), dtype=W.dtype)  # (.., d_in, h)
        return DeepMomentumState(step=0, A1=A1, A2=A2)

    def memory_step(self, A1, A2, u):
        """The momentum level: one gradient step on :func:`memory_objective` under the decay ``alpha``."""
        hp = self.hyperparameters
        dA1, dA2 = memory_objective_gradient(A1, A2, u)
        A1 = hp["momentum"] * A1 - hp["lr"] * dA1  # (.., h, d_in)
        A2 = hp["momentum"] * A2 - hp["lr"] * dA2  # (.., d_in, h)
        return A1, A2, SolveReport(method="iterative", solver="gd (one step, NL-23)", iterations=1)

    @overflow_checked_step
    def step(self, W, g, state: DeepMomentumState, *, method="closed"):
        """One step (iterative only): the MLP memory's gradient step, then ``W + m(u)``. Returns ``(W, state, reports)``."""
        if method == "closed":
            raise ClosedFormUnavailable("deep_momentum has no closed form (its memory is an MLP, its problem "
                                        "non-convex): use method='iterative'")
        xp = self.check_step(W, g, state, DeepMomentumState, method)
        if tuple(state.A1.shape[:-2]) != tuple(W.shape[:-2]) or state.A1.shape[-1] != W.shape[-1]:
            raise ValueError(f"state.A1 has shape {tuple(state.A1.shape)} but W has shape {tuple(W.shape)}: "
                             "make the state with init(W)")
        A1, A2, rep = self.memory_step(state.A1, state.A2, g)
        W_new = W + read_out(A1, A2, g)  # (.., d_out, d_in)
        self.check_finite(xp, weights=W_new)
        return W_new, DeepMomentumState(state.step + 1, A1, A2), {"momentum": rep,
                                                                  "weights": SolveReport(method="closed",
                                                                                         solver="W + m(u)")}


__all__ = ["DeepMomentum", "DeepMomentumState", "read_out", "memory_objective", "memory_objective_gradient"]
