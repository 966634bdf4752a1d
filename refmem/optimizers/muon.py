r"""Muon: momentum whose output passes through the nearest-orthogonal-matrix level (NL-24, NLx 4, MATH.md 6).

torch.optim.Muon's documented update (``lr`` :math:`\gamma`, ``weight_decay``
:math:`\lambda`, ``momentum`` :math:`\mu`, ``nesterov``, ``ns_coefficients``,
``eps``, ``ns_steps``, ``adjust_lr_fn``):

.. math::

    B_t = \mu B_{t-1} + g_t, \qquad
    \tilde B_t = g_t + \mu B_t \;(\text{nesterov}) \text{ or } B_t, \qquad
    O_t = \mathrm{NS}_k^{(a,b,c)}(\tilde B_t; \epsilon), \\
    W_t = (1 - \gamma\lambda) W_{t-1} - \tilde\gamma\, O_t, \qquad
    \tilde\gamma = \gamma \sqrt{\max(1, A/B)} \;(\text{"original"}) \text{ or } 0.2\,\gamma\sqrt{\max(A, B)}
    \;(\text{"match\_rms\_adamw"}),

for ``W`` of shape ``[..., A, B]``. As levels (NL-24: "non-linear outputs"
on the momentum memory):

1. **momentum** :math:`B_t = \operatorname{argmin}_B -\langle B, g_t\rangle + \tfrac12\|B - \mu B_{t-1}\|^2`;
2. **orthogonalisation** :math:`O_t = \operatorname{argmin}_{O^TO = I}\|O - \tilde B_t\|_F`
   (:mod:`.orthogonalization`), when ``orthogonalize="polar"``: closed form the
   polar factor from the SVD, iterative the cubic Newton-Schulz iteration to
   a certified residual. With ``orthogonalize="quintic"`` (torch's, the default)
   this level is replaced by the fixed quintic map, which solves no problem
   (its report says ``method="fixed map"``);
3. **weights** :math:`W_t = \operatorname{argmin}_W \langle W, O_t\rangle + \frac{1}{2\tilde\gamma}\|W - (1-\gamma\lambda)W_{t-1}\|^2`:
   decoupled weight decay is a forget gate (it uses the unadjusted :math:`\gamma`, as torch does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..level import solve
from .momentum import momentum_level
from .optimizer import (Optimizer, bool_hyperparameter, check_weights, descent_step, fixed_map_report,
                        int_hyperparameter, overflow_checked_step, real_hyperparameter)
from .orthogonalization import nearest_orthogonal, newton_schulz_quintic

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
ORTHOGONALIZERS = ("quintic", "polar")


def adjusted_lr(lr: float, adjust_lr_fn, shape) -> float:
    r"""torch's learning-rate adjustment for a matrix of shape ``[..., A, B]`` (the last two axes)."""
    A, B = shape[-2], shape[-1]
    if adjust_lr_fn in (None, "original"):
        return lr * math.sqrt(max(1.0, A / B))
    return lr * 0.2 * math.sqrt(max(A, B))


@dataclass(frozen=True)
class MuonState:
    """``step`` and ``momentum_buffer`` :math:`B_t` ``[..., A, B]``."""

    step: int
    momentum_buffer: object


class Muon(Optimizer):
    """Muon with torch.optim.Muon's hyperparameters, and the exact polar factor as an option.

    Parameters
    ----------
    lr : float, default 1e-3
    weight_decay : float, default 0.1
        Decoupled; ``lr * weight_decay <= 1``.
    momentum : float, default 0.95
    nesterov : bool, default True
    ns_coefficients : (float, float, float), default (3.4445, -4.775, 2.0315)
    eps : float, default 1e-7
        Floor of the Frobenius norm the quintic divides by.
    ns_steps : int, default 5
        In ``[0, 100)`` (torch's limit).
    adjust_lr_fn : {None, "original", "match_rms_adamw"}
    orthogonalize : {"quintic", "polar"}, default "quintic"
        ``"quintic"``: torch's fixed map (``ns_coefficients``, ``ns_steps``, ``eps``);
        ``"polar"``: the orthogonalisation level solved exactly (SVD) or iteratively (cubic Newton-Schulz).
    """

    name = "muon"

    def __init__(self, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None,
                 orthogonalize="quintic"):
        lr = real_hyperparameter(lr, "lr", low=0.0, low_open=True)
        weight_decay = real_hyperparameter(weight_decay, "weight_decay", low=0.0)
        if lr * weight_decay > 1.0:
            raise ValueError(f"weight_decay: lr * weight_decay must be <= 1; got {lr * weight_decay}")
        if not isinstance(ns_coefficients, (tuple, list)) or len(ns_coefficients) != 3:
            raise TypeError(f"ns_coefficients must be a tuple of 3 real numbers; got {ns_coefficients!r}")
        coeffs = tuple(real_hyperparameter(c, f"ns_coefficients[{i}]") for i, c in enumerate(ns_coefficients))
        if adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(f"adjust_lr_fn must be one of {ADJUST_LR_FNS}; got {adjust_lr_fn!r}")
        if orthogonalize not in ORTHOGONALIZERS:
            raise ValueError(f"orthogonalize must be one of {ORTHOGONALIZERS}; got {orthogonalize!r}")
        super().__init__(lr=lr, weight_decay=weight_decay,
                         momentum=real_hyperparameter(momentum, "momentum", low=0.0, high=1.0),
                         nesterov=bool_hyperparameter(nesterov, "nesterov"), ns_coefficients=coeffs,
                         eps=real_hyperparameter(eps, "eps", low=0.0, low_open=True),
                         ns_steps=int_hyperparameter(ns_steps, "ns_steps", low=0, high=99),
                         adjust_lr_fn=adjust_lr_fn, orthogonalize=orthogonalize)

    def init(self, W) -> MuonState:
        xp = check_weights(W)
        return MuonState(step=0, momentum_buffer=xp.zeros_like(W))

    def orthogonalization_step(self, B, *, method="closed"):
        """Level 2 on its own: ``(O, report)`` for the (Nesterov) momentum ``B`` ``[..., A, B]``."""
        hp = self.hyperparameters
        if hp["orthogonalize"] == "polar":
            return nearest_orthogonal(B, method=method)
        O = newton_schulz_quintic(B, steps=hp["ns_steps"], coefficients=hp["ns_coefficients"], eps=hp["eps"])
        return O, fixed_map_report(f"quintic newton-schulz ({hp['ns_steps']} steps)")

    @overflow_checked_step
    def step(self, W, g, state: MuonState, *, method="closed"):
        """One step: momentum, orthogonalisation, weights. Returns ``(W, state, reports)``."""
        xp = self.check_step(W, g, state, MuonState, method, "momentum_buffer")
        hp = self.hyperparameters
        mu, lr = hp["momentum"], hp["lr"]
        reports = {}
        B, reports["momentum"] = solve(momentum_level(1.0, mu), state.momentum_buffer, None, g, method=method)
        B_read = g + mu * B if hp["nesterov"] else B  # (.., A, B)
        O, reports["orthogonalization"] = self.orthogonalization_step(B_read, method=method)
        W_new, reports["weights"] = descent_step(W, O, adjusted_lr(lr, hp["adjust_lr_fn"], W.shape),
                                                 1.0 - lr * hp["weight_decay"], method=method)
        self.check_finite(xp, weights=W_new, momentum_buffer=B)
        return W_new, MuonState(step=state.step + 1, momentum_buffer=B), reports


__all__ = ["Muon", "MuonState", "adjusted_lr"]
