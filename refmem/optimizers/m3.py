r"""M3, the multi-scale momentum Muon (NLx Algorithm 1, MATH.md 6 and 7): momentum levels at two frequencies, orthogonalised.

Algorithm 1 of arXiv 2512.24695, as refmem reads it (learning rate
:math:`\eta`, momentum factors :math:`\beta_1, \beta_2, \beta_3`, mixing weight
:math:`\alpha`, :math:`\epsilon`, slow frequency ``f``; step ``t`` from 1,
chunk ``k`` = steps ``(k-1)f+1 .. kf``):

.. math::

    M^{(1)}_t &= M^{(1)}_{t-1} + \beta_1 g_t, \qquad
    V_t = V_{t-1} + \beta_2\, g_t \odot g_t, \qquad
    O^{(1)}_t = \mathrm{orth}(M^{(1)}_t), \\
    W_t &= W_{t-1} - \eta\, \frac{O^{(1)}_t + \alpha\, O^{(2)}}{\sqrt{V_t} + \epsilon}, \\
    \text{after step } t = kf:\quad M^{(2)} &\leftarrow M^{(2)} + \beta_3 \sum_{s=(k-1)f+1}^{kf} g_s, \qquad
    O^{(2)} = \mathrm{orth}(M^{(2)}) .

Levels (the slow one updates ``f`` times less often; NL Definition 2):

- ``fast_momentum``: :math:`M^{(1)}_t = \operatorname{argmin}_M -\langle M, g_t\rangle + \frac{1}{2\beta_1}\|M - M^{(1)}_{t-1}\|^2`;
- ``second_moment``: :math:`V_t = \operatorname{argmin}_V -\langle V, g_t^2\rangle + \frac{1}{2\beta_2}\|V - V_{t-1}\|^2`;
- ``fast_orthogonalization`` / ``slow_orthogonalization``: the nearest orthogonal
  matrix (:mod:`.orthogonalization`; closed SVD, iterative certified cubic Newton-Schulz),
  or a fixed map (``orthogonalize="cubic"`` or ``"quintic"`` with ``ns_steps`` steps);
- ``slow_momentum`` (every ``f`` steps): :math:`M^{(2)} = \operatorname{argmin}_M -\langle M, \sum_{\text{chunk}} g_s\rangle + \frac{1}{2\beta_3}\|M - M^{(2)}\|^2`;
- ``weights``: :math:`W_t = \operatorname{argmin}_W \langle W, d_t\rangle + \frac{1}{2\eta}\|W - W_{t-1}\|^2`,
  :math:`d_t = (O^{(1)}_t + \alpha O^{(2)}) / (\sqrt{V_t} + \epsilon)`.

One documented choice per ambiguity of the print (specs/m3.md lists them
with the public reproduction's reading): accumulation as printed (no decay);
the slow sum has ``f`` terms (the print's index range has ``f + 1``); the new
slow direction is used from the next step on; :math:`O^{(2)} = 0` until the
first chunk completes; ``orth`` is the level's exact solution unless a
fixed map is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..backends import namespace_of
from ..level import solve
from ..solvers import SolveReport
from .momentum import momentum_level
from .optimizer import (Optimizer, check_weights, descent_step, divide_by_denominator, fixed_map_report,
                        int_hyperparameter, overflow_checked_step, real_hyperparameter)
from .orthogonalization import nearest_orthogonal, newton_schulz_cubic, newton_schulz_quintic

ORTHOGONALIZERS = ("polar", "cubic", "quintic")


@dataclass(frozen=True)
class M3State:
    r"""The state of every level (all arrays ``[..., d_out, d_in]``).

    Attributes
    ----------
    step : int
    fast_momentum : :math:`M^{(1)}`
    second_moment : :math:`V`
    slow_momentum : :math:`M^{(2)}`
    slow_orthogonal : :math:`O^{(2)}` (zero until the first chunk completes)
    chunk_sum : the gradients of the current chunk, summed (the slow level's context)
    """

    step: int
    fast_momentum: object
    second_moment: object
    slow_momentum: object
    slow_orthogonal: object
    chunk_sum: object


class M3(Optimizer):
    r"""M3 (NLx Algorithm 1).

    Parameters
    ----------
    lr : float, default 1e-3
    betas : (float, float, float), default (0.9, 0.999, 0.9)
        :math:`\beta_1, \beta_2, \beta_3`, each in ``(0, 1]``: the step sizes of the
        fast momentum, second-moment and slow momentum levels.
    alpha : float, default 1.0
        Weight of the slow direction, ``>= 0``.
    eps : float, default 1e-8
    frequency : int, default 100
        ``f``: the slow level updates after every ``f`` steps.
    orthogonalize : {"polar", "cubic", "quintic"}, default "polar"
        ``"polar"``: the orthogonalisation levels are solved (closed: SVD;
        iterative: cubic Newton-Schulz to a certified residual). ``"cubic"`` /
        ``"quintic"``: ``ns_steps`` Newton-Schulz steps as a fixed map.
    ns_steps : int, default 5
    """

    name = "m3"

    def __init__(self, lr=1e-3, betas=(0.9, 0.999, 0.9), alpha=1.0, eps=1e-8, frequency=100,
                 orthogonalize="polar", ns_steps=5):
        if not isinstance(betas, (tuple, list)) or len(betas) != 3:
            raise TypeError(f"betas must be a tuple of 3 real numbers in (0, 1]; got {betas!r}")
        betas = tuple(real_hyperparameter(b, f"betas[{i}]", low=0.0, high=1.0, low_open=True)
                      for i, b in enumerate(betas))
        if orthogonalize not in ORTHOGONALIZERS:
            raise ValueError(f"orthogonalize must be one of {ORTHOGONALIZERS}; got {orthogonalize!r}")
        super().__init__(lr=real_hyperparameter(lr, "lr", low=0.0, low_open=True), betas=betas,
                         alpha=real_hyperparameter(alpha, "alpha", low=0.0),
                         eps=real_hyperparameter(eps, "eps", low=0.0),
                         frequency=int_hyperparameter(frequency, "frequency", low=1),
                         orthogonalize=orthogonalize, ns_steps=int_hyperparameter(ns_steps, "ns_steps", low=0, high=99))

    def init(self, W) -> M3State:
        xp = check_weights(W)
        z = xp.zeros_like(W)  # (.., d_out, d_in)
        return M3State(step=0, fast_momentum=z, second_moment=z, slow_momentum=z, slow_orthogonal=z, chunk_sum=z)

    # ---------------------------------------------------------------- one function per level

    def fast_momentum_step(self, M1, g, *, method="closed"):
        r""":math:`M^{(1)} + \beta_1 g` as its level; ``(M1, report)``."""
        return solve(momentum_level(self.hyperparameters["betas"][0], 1.0), M1, None, g, method=method)

    def second_moment_step(self, V, g, *, method="closed"):
        r""":math:`V + \beta_2 g \odot g` as its level; ``(V, report)``."""
        return solve(momentum_level(self.hyperparameters["betas"][1], 1.0), V, None, g * g, method=method)

    def slow_momentum_step(self, M2, chunk_sum, *, method="closed"):
        r""":math:`M^{(2)} + \beta_3 \sum_{chunk} g` as its level; ``(M2, report)``."""
        return solve(momentum_level(self.hyperparameters["betas"][2], 1.0), M2, None, chunk_sum, method=method)

    def orthogonalization_step(self, M, *, method="closed"):
        """``orth(M)``: the nearest orthogonal matrix (``"polar"``) or a fixed Newton-Schulz map; ``(O, report)``."""
        hp = self.hyperparameters
        if hp["orthogonalize"] == "polar":
            return nearest_orthogonal(M, method=method)
        k = hp["ns_steps"]
        if hp["orthogonalize"] == "cubic":
            return newton_schulz_cubic(M, steps=k), fixed_map_report(f"cubic newton-schulz ({k} steps)")
        return newton_schulz_quintic(M, steps=k), fixed_map_report(f"quintic newton-schulz ({k} steps)")

    def weights_step(self, W, O1, O2, V, *, method="closed"):
        r""":math:`W - \eta (O^{(1)} + \alpha O^{(2)}) / (\sqrt V + \epsilon)` as its level; ``(W, report)``."""
        hp = self.hyperparameters
        xp = namespace_of(W)
        d = divide_by_denominator(O1 + hp["alpha"] * O2, xp.sqrt(V) + hp["eps"], self.name, xp)  # (.., d_out, d_in)
        return descent_step(W, d, hp["lr"], method=method)

    # ---------------------------------------------------------------- the whole step

    @overflow_checked_step
    def step(self, W, g, state: M3State, *, method="closed"):
        """One step of Algorithm 1's inner loop, and the slow level at the end of a chunk. Returns ``(W, state, reports)``."""
        xp = self.check_step(W, g, state, M3State, method,
                             "fast_momentum", "second_moment", "slow_momentum", "slow_orthogonal", "chunk_sum")
        t = state.step + 1
        reports: dict[str, SolveReport] = {}
        M1, reports["fast_momentum"] = self.fast_momentum_step(state.fast_momentum, g, method=method)
        V, reports["second_moment"] = self.second_moment_step(state.second_moment, g, method=method)
        O1, reports["fast_orthogonalization"] = self.orthogonalization_step(M1, method=method)
        W_new, reports["weights"] = self.weights_step(W, O1, state.slow_orthogonal, V, method=method)
        self.check_finite(xp, weights=W_new, fast_momentum=M1, second_moment=V)
        new = replace(state, step=t, fast_momentum=M1, second_moment=V, chunk_sum=state.chunk_sum + g)
        if t % self.hyperparameters["frequency"] == 0:  # end of a chunk: the slow level, used from the next step on
            M2, reports["slow_momentum"] = self.slow_momentum_step(state.slow_momentum, new.chunk_sum, method=method)
            O2, reports["slow_orthogonalization"] = self.orthogonalization_step(M2, method=method)
            new = replace(new, slow_momentum=M2, slow_orthogonal=O2, chunk_sum=xp.zeros_like(W))
        return W_new, new, reports


__all__ = ["M3", "M3State"]
