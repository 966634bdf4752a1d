r"""Memora (Miras): l2 attentional bias under the KL retention on a scaled simplex (MATH.md 3, 4, 5h).

Every row of the memory is a point of the scaled simplex
:math:`\Delta_c = \{m \in \mathbb R^{d_k}: m_j > 0, \sum_j m_j = c\}`; one level per token,

.. math::

    M_t = \operatorname*{argmin}_{M \in \Delta_c^{d_v}}\; \tilde l(M)
          + \frac1{\eta_t}\mathrm{KL}(M \| M_{t-1}) + \frac1a \mathrm{KL}(M \| U), \qquad o_t = M_t q_t,

with :math:`l(M) = \tfrac12\|M k_t - v_t\|^2` linearised at :math:`M_{t-1}`
(``step="explicit"``, Miras' softmax rule, closed form
:math:`M_t = c\,\operatorname{softmax}_{\rm row}\big((1-\lambda_t)\log M_{t-1} - \eta'_t\,(M_{t-1}k_t - v_t)k_t^T\big)`,
:math:`\eta' = 1/(1/a + 1/\eta_t)`, :math:`\lambda = (1/a)\,\eta'`; :class:`refmem.retentions.kl_simplex.KLSimplex`)
or the l2 loss itself (``step="implicit"``: no closed form, the softmax fixed
point is implicit in ``M``; iterative only). The iterative solver is mirror
descent on the simplex (:func:`refmem.solvers.mirror_descent`), which knows
nothing of the softmax closed form.

Without ``initial_state`` the scan starts from the uniform state ``c / d_k``
(the centre of the simplex; ``0`` is not a point of it). A given
``initial_state`` must have positive rows summing to ``c``.

:func:`memora_deep_recurrent` runs Memora on the residual-MLP memory of
:mod:`refmem.memories.deep_memory`, with the KL retention on the rows of both
weight matrices (rows of ``W1`` sum to ``c`` over the hidden units, rows of
``W2`` over the input coordinates); its iterative steps need ``h = d``.
"""

from __future__ import annotations

from ..level import Level
from ..linalg import matvec
from ..objectives import L2
from ..retentions.kl_simplex import KLSimplex
from ..validation import as_param, check_scan_state, finite_outputs
from ._inputs import check_sequence, check_step_gate, random_inputs
from ._level_scan import level_scan, state_step
from .deep_memory import deep_scan
from .residual_mlp import ResidualLoss


def _check_eta(eta, k, xp):
    check_step_gate(eta, "eta", k, xp, low=0.0, low_open=True, high=None)


def _check_scalars(a, c, xp, dtype):
    for name, x in (("a", a), ("c", c)):
        if hasattr(x, "shape"):
            raise TypeError(f"{name} must be a positive number (one for the whole scan); got an array")
        as_param(x, name, xp, dtype, low=0.0, low_open=True)


def memora_level(eta, *, a=1.0, c=1.0, step="explicit"):
    """One Memora step as a level: l2 bias, KL retention on the scaled simplex."""
    return Level(L2(), KLSimplex(eta=eta, a=a, c=c), step=step, name="memora")


def uniform_state(batch, d_v, d_k, c, xp, dtype):
    """The centre of the scaled simplex: every entry ``c / d_k``, ``[..., d_v, d_k]``."""
    return xp.full(tuple(batch) + (d_v, d_k), c / d_k, dtype=dtype)


@finite_outputs
def memora_recurrent(q, k, v, eta, *, a=1.0, c=1.0, step="explicit", method="closed", initial_state=None):
    r"""Recurrent Memora with a linear memory.

    Parameters
    ----------
    q, k : array ``[..., T, d_k]``
    v : array ``[..., T, d_v]``
    eta : array ``[..., T]``
        Step sizes of the local KL term, ``> 0``.
    a : float
        Scale of the global KL-to-uniform term (weight ``1/a``), ``> 0``.
    c : float
        Row sum of the memory, ``> 0``.
    step : {"explicit", "implicit"}
    method : {"closed", "iterative"}
        The implicit step has no closed form (``ClosedFormUnavailable``).
    initial_state : array ``[..., d_v, d_k]``, optional
        Positive rows summing to ``c``; default uniform ``c / d_k``.

    Returns
    -------
    o : array ``[..., T, d_v]``, M : array ``[..., d_v, d_k]``
        The explicit closed-form scan carries :math:`\log M` (:func:`_log_state_scan`): with
        large keys entries of ``M`` below the smallest float are returned as 0 (their
        logarithm stayed finite inside the scan); such an ``M`` is not a valid
        ``initial_state`` (the KL retention needs positive entries).
    """
    xp = check_sequence(q, k, v, initial_state, eta=eta)
    _check_eta(eta, k, xp)
    _check_scalars(a, c, xp, k.dtype)
    M0 = uniform_state(k.shape[:-2], v.shape[-1], k.shape[-1], float(c), xp, k.dtype) if initial_state is None \
        else initial_state
    obj = L2()

    def level_at(t):
        return Level(obj, KLSimplex(eta=eta[..., t], a=a, c=c), step=step, name="memora")

    if step == "explicit" and method == "closed":
        return _log_state_scan(q, k, v, level_at, M0, xp)
    return level_scan(q, k, v, level_at, M0, xp, method=method)


def _log_state_scan(q, k, v, level_at, M0, xp):
    r"""The explicit closed-form scan with the state carried as :math:`\log M` (softmax as log-softmax).

    The same steps as :func:`~refmem.memories._level_scan.level_scan` (each the level's
    closed form, :meth:`KLSimplex.explicit_log_step`), but an entry that underflows to 0 in
    ``M`` (keys of norm 1e3 already push rows to :math:`e^{-10^6}`) keeps its finite logarithm,
    which the next step reads; ``M`` itself is used only in ``M k`` and ``M q``, where those
    entries are 0 to rounding.
    """
    ret0 = level_at(0).retention.bind(xp, k.dtype)
    state_step(lambda M: ret0.check_state(M, xp), 0, ("M_t",), M0)  # the caller's initial_state: ValueError
    log_M = xp.log(M0)  # (.., d_v, d_k)
    M = M0
    outs = []
    for t in range(k.shape[-2]):
        level = level_at(t)
        ret = level.retention.bind(xp, k.dtype)
        g = level.objective.grad(M, k[..., t, :], v[..., t, :], xp)  # (.., d_v, d_k) at M_{t-1}
        log_M = ret.explicit_log_step(log_M, g, xp)
        check_scan_state(log_M, t, xp)  # an overflow in g is a DivergenceError at step t
        M = xp.exp(log_M)  # (.., d_v, d_k)
        outs.append(matvec(M, q[..., t, :]))  # (.., d_v, d_k) @ (.., d_k) -> (.., d_v)
    o = xp.stack(outs, axis=-2) if outs else xp.zeros(tuple(v.shape), dtype=v.dtype)
    return o, M


@finite_outputs
def memora_deep_recurrent(q, k, v, eta, *, a=1.0, c=1.0, step="explicit", method="closed", initial_state=None,
                          hidden=None, activation="tanh"):
    """Memora on the deep memory ``M(x) = x + W1 sigma(W2 x)`` (``d_k = d_v = d``); returns ``(o, (W1, W2))``.

    l2 bias on ``M(k) - v``; the KL retention on the rows of ``W1`` and ``W2``.
    Default start: every row uniform (``W1 = c/h``, ``W2 = c/d``).
    """
    xp = check_sequence(q, k, v, eta=eta)
    _check_eta(eta, k, xp)
    _check_scalars(a, c, xp, k.dtype)

    def retention_at(t):
        return KLSimplex(eta=eta[..., t], a=a, c=c)

    def uniform_rows(batch, d, h, xp, dtype):
        return uniform_state(batch, d, h, float(c), xp, dtype), uniform_state(batch, h, d, float(c), xp, dtype)

    return deep_scan(q, k, v, retention_at, initial_state=initial_state, hidden=hidden, loss=ResidualLoss("l2"),
                     step=step, method=method, activation=activation, initial_default=uniform_rows)


def make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64"):
    """Random valid inputs (``q, k, v`` and the gates) in the registry's signature (:class:`~refmem.memories.MemorySpec`)."""
    return random_inputs(seed, batch, T, d_k, d_v, xp, dtype, eta=(0.1, 1.0))


def make_initial_state(seed, batch, d_k, d_v, xp, dtype="float64", *, c=1.0):
    """A random point of the scaled simplex (rows ``c softmax(z)``, ``z`` standard normal)."""
    import numpy as np  # randomness only

    g = np.random.default_rng(seed)
    z = g.standard_normal(tuple(batch) + (d_v, d_k))
    M = c * np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    return xp.asarray(np.asarray(M, dtype=dtype))
