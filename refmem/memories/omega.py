r"""The Omega rule (Atlas): the l2 objective over a sliding window of ``c`` tokens (MATH.md 5d).

At step ``t`` the window holds the tokens :math:`i = t-c+1, \dots, t` with
weights :math:`\gamma_{t,1..c}` (oldest first: ``gamma[..., t, c-1]`` weights
the current token). Tokens before the start of the sequence are absent (zero
contribution), also when an ``initial_state`` is given. With
:math:`K_t` (``c x d_k``), :math:`V_t` (``c x d_v``), :math:`G_t = \mathrm{diag}(\gamma_t)`:

explicit (one gradient step at :math:`M_{t-1}`, MATH.md 5d)

.. math::

    M_t = M_{t-1}\,(a_t I - K_t^T G_t K_t) + V_t^T G_t K_t
        = a_t M_{t-1} - \sum_i \gamma_{t,i} (M_{t-1} k_i - v_i) k_i^T ;

implicit (proximal point)

.. math::

    M_t = \operatorname*{argmin}_M \tfrac12 \sum_i \gamma_{t,i}\|M k_i - v_i\|^2 + \tfrac12\|M - a_t M_{t-1}\|^2,

computed through the SVD of the window's weighted keys (:meth:`~refmem.objectives.windowed_l2.WindowedL2.prox`).
The weights carry the step size (:math:`\eta = 1` in the retention). Read-out
:math:`o_t = M_t q_t`. With ``c = 1``, ``a = 1``, ``gamma = b`` the explicit
rule is the delta rule and the implicit one is Longhorn.

Note: the gradient of the explicit form is taken at :math:`M_{t-1}`, not at
:math:`a_t M_{t-1}` as in the gated delta rule; with ``a < 1`` and ``c = 1``
the two differ.
"""

from __future__ import annotations

from ..level import Level
from ..linalg import eye_like, matvec
from ..objectives.windowed_l2 import WindowedL2
from ..retentions import ForgetGate
from ..validation import as_param, check_arrays, finite_outputs, require
from ._inputs import check_sequence, check_step_gate, initial, random_inputs

STEPS = ("explicit", "implicit")


def _mT(A, xp):
    return xp.matrix_transpose(A)


def _check_gamma(gamma, k, xp):
    """``gamma [c]`` (shared by every step) or ``[..., T, c]``, finite, ``>= 0``; returns ``c``."""
    require(gamma=gamma)
    check_arrays(k=k, gamma=gamma)
    lead = tuple(k.shape[:-1])  # (.., T)
    if gamma.ndim == 1:
        c = gamma.shape[0]
    elif tuple(gamma.shape[:-1]) == lead:
        c = gamma.shape[-1]
    else:
        raise ValueError(f"gamma must have shape [c] (one weight per window position) or {lead} + (c,) "
                         f"(per step); got {tuple(gamma.shape)}")
    if c < 1:
        raise ValueError(f"gamma must hold c >= 1 window weights; got shape {tuple(gamma.shape)}")
    as_param(gamma, "gamma", xp, gamma.dtype, low=0.0)
    return c


def _windows(x, c, xp):
    """``x [..., T, d]`` with ``c - 1`` zero rows in front: window ``t`` is rows ``t .. t + c - 1``."""
    if c == 1:
        return x
    pad = xp.zeros(tuple(x.shape[:-2]) + (c - 1, x.shape[-1]), dtype=x.dtype)
    return xp.concat([pad, x], axis=-2)  # (.., T + c - 1, d)


@finite_outputs
def omega_recurrent(q, k, v, alpha, gamma, *, step="explicit", initial_state=None):
    """Recurrent Omega rule.

    Parameters
    ----------
    q, k, v, alpha, initial_state
        As :func:`~refmem.memories.gated_delta_rule.gated_delta_rule_recurrent` (``alpha`` the forget gates).
    gamma : array ``[c]`` or ``[..., T, c]``
        Window weights ``>= 0``, oldest token first; the window length is ``c``.
        The explicit rule diverges when ``sum_i gamma_i ||k_i||^2 > 2`` persistently
        (as the delta rule); the implicit rule is stable for all ``gamma >= 0``.
    step : {"explicit", "implicit"}

    Returns
    -------
    o : array ``[..., T, d_v]``
    M : array ``[..., d_v, d_k]``
    """
    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS}; got {step!r}")
    xp = check_sequence(q, k, v, initial_state, alpha=alpha)
    check_step_gate(alpha, "alpha", k, xp)
    c = _check_gamma(gamma, k, xp)
    Kp, Vp = _windows(k, c, xp), _windows(v, c, xp)  # (.., T + c - 1, d)
    M = initial(initial_state, k, v, xp)
    outs = []
    for t in range(k.shape[-2]):
        K, V = Kp[..., t:t + c, :], Vp[..., t:t + c, :]  # (.., c, d_k), (.., c, d_v)
        g = gamma if gamma.ndim == 1 else gamma[..., t, :]  # (c,) or (.., c)
        a = alpha[..., t, None, None]  # (.., 1, 1)
        if step == "explicit":
            GK = g[..., :, None] * K  # (.., c, d_k)
            A = _mT(K, xp) @ GK  # (.., d_k, c) @ (.., c, d_k) -> (.., d_k, d_k): K^T G K
            eye = eye_like(k.shape[-1], k, xp)  # (d_k, d_k)
            M = M @ (a * eye - A) + _mT(V, xp) @ GK  # (.., d_v, d_k) @ (.., d_k, d_k) + (.., d_v, c) @ (.., c, d_k)
        else:
            M = WindowedL2(g).prox(a * M, xp.ones_like(alpha[..., t]), K, V, xp)  # eta = 1; SVD of the c x d_k weighted keys
        outs.append(matvec(M, q[..., t, :]))  # (.., d_v)
    return xp.stack(outs, axis=-2), M


@finite_outputs
def omega_implicit_recurrent(q, k, v, alpha, gamma, *, initial_state=None):
    """The implicit Omega rule: :func:`omega_recurrent` with ``step="implicit"``."""
    return omega_recurrent(q, k, v, alpha, gamma, step="implicit", initial_state=initial_state)


def omega_level(alpha, gamma, *, step="explicit"):
    """One step as a level: windowed l2 objective (weights ``gamma [..., c]``), forget gate ``alpha``, ``eta = 1``.

    Solve it with the window's keys ``[..., c, d_k]`` and values ``[..., c, d_v]``.
    """
    return Level(WindowedL2(gamma), ForgetGate(eta=1.0, alpha=alpha), step=step, name=f"omega_{step}")


def omega_implicit_level(alpha, gamma):
    """The implicit step's level (see :func:`omega_level`)."""
    return omega_level(alpha, gamma, step="implicit")


def make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64", *, c=3):
    """Random valid inputs (``q, k, v`` and the gates) in the registry's signature (:class:`~refmem.memories.MemorySpec`)."""
    return random_inputs(seed, batch, T, d_k, d_v, xp, dtype, alpha=(0.8, 1.0), gamma=(0.05, 0.4, (c,)))


def make_implicit_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64", *, c=3):
    """Random valid inputs of the implicit form (larger ``gamma``: the step is unconditionally stable)."""
    inputs = make_inputs(seed, batch, T, d_k, d_v, xp, dtype, c=c)
    inputs["gamma"] = 5 * inputs["gamma"]  # large weights: the implicit rule stays stable
    return inputs
