r"""Adam and AdamW are optimal memories of the gradients (NLx app. B, MATH.md 6; Kingma and Ba, arXiv 1412.6980).

Three levels, as torch.optim.Adam / AdamW document them (``lr``, ``betas``,
``eps``, ``weight_decay``; step counter ``t`` from 1):

1. **first moment** :math:`\hat m_t = \operatorname{argmin}_x \tfrac12\sum_{s\le t} \beta_1^{t-s}\|x - g_s\|^2`
   (:mod:`.moment_memory`); closed form the running recurrence
   :math:`m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t`, :math:`\hat m_t = m_t / (1-\beta_1^t)`;
2. **second moment** :math:`\hat v_t`, the same memory over :math:`g_s \odot g_s` with :math:`\beta_2`;
   levels 1 and 2 have the same frequency and do not depend on each other (NL 2.2);
3. **weights** :math:`W_t = \operatorname{argmin}_W \langle W, d_t\rangle + \frac{1}{2\gamma}\|W - \kappa W_{t-1}\|^2`
   with the preconditioned direction :math:`d_t = \hat m_t / (\sqrt{\hat v_t} + \epsilon)`
   (``eps`` outside the square root, after bias correction, as torch documents).

Weight decay :math:`\lambda`: Adam adds :math:`\lambda W_{t-1}` to the gradient
before both moments (L2, coupled; :math:`\kappa = 1`); AdamW decays the weights
directly, :math:`\kappa = 1 - \gamma\lambda` (decoupled: a forget gate on level 3,
the moments never see it).

``method="closed"`` runs the recurrences; ``method="iterative"`` minimises the
two least-squares memories over the stored gradient history by conjugate
gradient and solves level 3 by conjugate gradient. The state keeps the
running (uncorrected) moments under torch's names ``exp_avg`` and
``exp_avg_sq`` in both modes, so a run may switch methods.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..solvers import SolveReport
from .moment_memory import bias_corrected, discounted_least_squares_argmin, ema_step
from .optimizer import (Optimizer, check_weights, closed_report, descent_step, divide_by_denominator,
                        overflow_checked_step, pair_of_betas, real_hyperparameter)


@dataclass(frozen=True)
class AdamState:
    """State of the three levels.

    Attributes
    ----------
    step : int
        Steps taken (``t``).
    exp_avg, exp_avg_sq : arrays ``[..., d_out, d_in]``
        Running uncorrected moments :math:`m_t, v_t` (torch's names).
    history, sq_history : tuples of arrays ``[..., d_out, d_in]``, or None
        The gradients :math:`g_1 .. g_t` the moments remember (after L2 decay)
        and their squares; kept when ``init(W, keep_history=True)`` (the
        default): the iterative method reads them. Memory grows with ``t``.
    """

    step: int
    exp_avg: object
    exp_avg_sq: object
    history: tuple | None = ()
    sq_history: tuple | None = ()


def moment_estimate(running, history, y, beta: float, t: int, *, method: str):
    r"""One moment level: the new running average and the memory's minimiser :math:`\hat x_t`.

    Parameters
    ----------
    running : array ``[..., d_out, d_in]``
        :math:`m_{t-1}` (uncorrected).
    history : tuple of arrays or None
        :math:`y_1 .. y_{t-1}`; required for ``method="iterative"``.
    y : array ``[..., d_out, d_in]``
        :math:`y_t` (a gradient or a squared gradient).
    beta : float in ``[0, 1)``
    t : int
        The step, from 1.
    method : {"closed", "iterative"}

    Returns
    -------
    running_new, estimate : arrays ``[..., d_out, d_in]``
    report : SolveReport
    """
    running_new = ema_step(running, y, beta)  # (.., d_out, d_in)
    if method == "closed":
        return running_new, bias_corrected(running_new, beta, t), closed_report("bias-corrected recurrence")
    if history is None:
        raise ValueError("method='iterative' solves the moment memories over the gradient history; "
                         "make the state with init(W, keep_history=True)")
    estimate, report = discounted_least_squares_argmin(tuple(history) + (y,), beta)
    return running_new, estimate, report


class Adam(Optimizer):
    r"""Adam with torch.optim.Adam's hyperparameters (``amsgrad``, ``maximize`` and the rest are not implemented).

    Parameters
    ----------
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
        Each in ``[0, 1)``.
    eps : float, default 1e-8
        ``>= 0``; added to :math:`\sqrt{\hat v_t}`.
    weight_decay : float, default 0
        L2 penalty added to the gradient (coupled).
    """

    name = "adam"
    decoupled = False

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        lr = real_hyperparameter(lr, "lr", low=0.0, low_open=True)
        betas = pair_of_betas(betas)
        eps = real_hyperparameter(eps, "eps", low=0.0)
        weight_decay = real_hyperparameter(weight_decay, "weight_decay", low=0.0)
        if self.decoupled and lr * weight_decay > 1.0:
            raise ValueError(f"weight_decay: lr * weight_decay must be <= 1 (the weights keep 1 - lr * weight_decay "
                             f"of themselves each step); got {lr * weight_decay}")
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def init(self, W, *, keep_history: bool = True) -> AdamState:
        xp = check_weights(W)
        zero = xp.zeros_like(W)  # (.., d_out, d_in)
        kept = () if keep_history else None
        return AdamState(step=0, exp_avg=zero, exp_avg_sq=zero, history=kept, sq_history=kept)

    @overflow_checked_step
    def step(self, W, g, state: AdamState, *, method="closed"):
        """One step: both moment levels, then the weights. Returns ``(W, state, reports)``."""
        xp = self.check_step(W, g, state, AdamState, method, "exp_avg", "exp_avg_sq")
        hp = self.hyperparameters
        lr, (b1, b2), eps, wd = hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"]
        t = state.step + 1
        if wd != 0.0 and not self.decoupled:
            g = g + wd * W  # (.., d_out, d_in) L2 penalty's gradient joins the gradient
        g2 = g * g  # (.., d_out, d_in)
        hist, sq_hist = state.history, state.sq_history
        m, m_hat, rep_m = moment_estimate(state.exp_avg, hist, g, b1, t, method=method)
        v, v_hat, rep_v = moment_estimate(state.exp_avg_sq, sq_hist, g2, b2, t, method=method)
        d = divide_by_denominator(m_hat, xp.sqrt(v_hat) + eps, self.name, xp)  # (.., d_out, d_in) preconditioned moment
        self.check_finite(xp, direction=d)
        keep = 1.0 - lr * wd if self.decoupled else 1.0
        W_new, rep_W = descent_step(W, d, lr, keep, method=method)
        self.check_finite(xp, weights=W_new, first_moment=m, second_moment=v)
        kept = hist is not None
        state = replace(state, step=t, exp_avg=m, exp_avg_sq=v,
                        history=hist + (g,) if kept else None, sq_history=sq_hist + (g2,) if kept else None)
        reports: dict[str, SolveReport] = {"first_moment": rep_m, "second_moment": rep_v, "weights": rep_W}
        return W_new, state, reports


class AdamW(Adam):
    """AdamW (torch.optim.AdamW): Adam whose weight decay is a forget gate on the weights (decoupled).

    Parameters as :class:`Adam`; ``weight_decay`` defaults to ``1e-2`` and must
    satisfy ``lr * weight_decay <= 1``.
    """

    name = "adamw"
    decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


__all__ = ["Adam", "AdamW", "AdamState", "moment_estimate"]
