r"""The Mesa layer: whole-context regularised least squares at every step (MATH.md 5e).

.. math::

    M_t = \operatorname*{argmin}_M \sum_{i \le t} \|M k_i - v_i\|^2 + \lambda_t \|M\|^2,
    \qquad o_t = M_t q_t .

Setting the gradient :math:`2 (M H_t - G_t) + 2 M \Lambda_t` to zero, with the
running sufficient statistics

.. math::

    H_t = H_0 + \sum_{i \le t} k_i k_i^T \quad (d_k \times d_k), \qquad
    G_t = G_0 + \sum_{i \le t} v_i k_i^T \quad (d_v \times d_k),

gives :math:`M_t (H_t + \Lambda_t) = G_t`, i.e. the linear solve
:math:`(H_t + \Lambda_t) M_t^T = G_t^T` (``H_t + Lambda_t`` is symmetric positive
definite since ``lam > 0``). ``Lambda_t = lam_t I`` for a scalar regulariser, or
``diag(lam_t)`` for one per key channel (the regulariser
:math:`\sum_j \lambda_j \|M e_j\|^2`).

Two independent computations are provided:

- :func:`mesa_recurrent` (closed form): running sums and ``xp.linalg.solve``;
- :func:`mesa_iterative`: conjugate gradient (:func:`refmem.solvers.conjugate_gradient`)
  on the stated objective, its gradient formed from the raw keys and values
  ``sum_i (M k_i - v_i) k_i^T`` (never from ``H_t``, ``G_t`` or a solve), all
  ``T`` problems as one batch.

What ``initial_state`` means here. A matrix ``M_0`` does not determine the
Mesa state: the minimiser over a longer context needs the past *data*, not
the past minimiser. The state of a Mesa layer is therefore the pair of
running sufficient statistics ``(G_0, H_0)`` (``G_0 [..., d_v, d_k]``,
``H_0 [..., d_k, d_k]``, symmetric positive semi-definite; ``lam`` is *not*
included in ``H_0``). With it, scanning ``x[:s]`` and then ``x[s:]`` from the
first scan's statistics (``return_stats=True``) equals scanning ``x`` in one go.
A bare array ``initial_state`` is rejected with a ``TypeError``.
"""

from __future__ import annotations

import numpy as np  # randomness only (make_inputs, make_initial_state)

from ..linalg import eye_like, matvec, outer
from ..parallel import workers_option
from ..solvers import Problem
from ..solvers.dispatch import minimize
from ..validation import as_param, check_arrays, dtype_name, finite_outputs, get_option, require
from ._inputs import check_sequence, random_inputs


def _check_lam(lam, k, xp):
    """``lam``: a number ``> 0``, or an array ``[..., T]`` / ``[..., T, d_k]`` of positive entries."""
    lam = as_param(lam, "lam", xp, k.dtype, low=0.0, low_open=True)
    lead = tuple(k.shape[:-1])  # (..., T)
    if lam.ndim and tuple(lam.shape) not in (lead, lead + (k.shape[-1],)):
        raise ValueError(f"lam must be a number, or have shape {lead} (one per step) or "
                         f"{lead + (k.shape[-1],)} (one per key channel); got {tuple(lam.shape)}")
    return lam


def _lam_matrix(lam_t, per_channel, I):
    """``Lambda_t [..., d_k, d_k]``: ``lam_t I`` or ``diag(lam_t)``."""
    if per_channel:
        return I * lam_t[..., None, :]  # (d_k, d_k) * (.., 1, d_k): diag(lam_t)
    return I * (lam_t if lam_t.ndim == 0 else lam_t[..., None, None])  # (.., d_k, d_k)


def _check_stats(initial_state, q, k, v, xp):
    """Validate ``(G_0, H_0)``; return them, or zeros."""
    batch = tuple(k.shape[:-2])
    d_k, d_v = k.shape[-1], v.shape[-1]
    if initial_state is None:
        G0 = xp.zeros(batch + (d_v, d_k), dtype=k.dtype)
        H0 = xp.zeros(batch + (d_k, d_k), dtype=k.dtype)
        return G0, H0
    if not isinstance(initial_state, tuple) or len(initial_state) != 2:
        raise TypeError("initial_state for Mesa must be the running sufficient statistics (G_0, H_0): "
                        "G_0 = sum v k^T [..., d_v, d_k], H_0 = sum k k^T [..., d_k, d_k]; a single matrix "
                        "M_0 does not determine the Mesa state")
    G0, H0 = initial_state
    named = {"initial_state G_0": G0, "initial_state H_0": H0}
    require(**named)
    check_arrays(k=k, **named)
    if tuple(G0.shape) != batch + (d_v, d_k):
        raise ValueError(f"initial_state G_0 must have shape [..., d_v, d_k] = {batch + (d_v, d_k)}; got {tuple(G0.shape)}")
    if tuple(H0.shape) != batch + (d_k, d_k):
        raise ValueError(f"initial_state H_0 must have shape [..., d_k, d_k] = {batch + (d_k, d_k)}; got {tuple(H0.shape)}")
    if not get_option("check_finite"):  # the symmetry test reads the device, like the finiteness checks
        return G0, H0
    asym = float(xp.max(xp.abs(H0 - xp.matrix_transpose(H0)))) if H0.ndim and H0.size else 0.0
    scale = float(xp.max(xp.abs(H0))) if H0.size else 0.0
    if asym > 1e-12 * max(scale, 1.0) * d_k:
        raise ValueError("initial_state H_0 must be symmetric (a sum of k k^T)")
    return G0, H0


def condition_bound(lam, k, H0, xp) -> float:
    r"""An upper bound on the condition number of every system :math:`H_t + \Lambda_t` of a scan.

    :math:`\kappa \le (\|H_0\|_F + \sum_i \|k_i\|^2 + \lambda_{max}) / \lambda_{min}` over the
    whole batch: :math:`\|k k^T\|_2 = \|k\|^2` and :math:`\|H_0\|_2 \le \|H_0\|_F` bound the
    largest eigenvalue, :math:`\lambda_{min}` the smallest (``H_t`` is PSD).
    """
    key_sq = xp.sum(k * k, axis=(-2, -1))  # (..,) sum_i ||k_i||^2
    h0 = xp.sqrt(xp.sum(H0 * H0, axis=(-2, -1)))  # (..,) ||H_0||_F
    top = float(xp.max(xp.reshape(key_sq + h0, (-1,)))) if key_sq.ndim else float(key_sq + h0)
    lam_max = float(xp.max(lam)) if lam.ndim else float(lam)
    lam_min = float(xp.min(lam)) if lam.ndim else float(lam)
    return (top + lam_max) / lam_min


def _check_conditioning(lam, k, H0, xp):
    r"""Refuse a scan whose systems leave fewer than a third of the format's digits.

    A solve of a system with condition number :math:`\kappa` (LU in :func:`mesa_recurrent`, CG in
    :func:`mesa_iterative` and the chunked form, whose error is about :math:`\kappa` times its
    residual tolerance) is accurate to about :math:`\kappa\varepsilon` relative. Past
    :math:`\kappa = \varepsilon^{-2/3}` (``2.7e10`` in float64, ``4.1e4`` in float32), where that
    error reaches :math:`\varepsilon^{1/3}`, every form is refused the same way, with the bound
    (:func:`condition_bound`, an upper bound: well-spread keys are often much better conditioned)
    and the ``lam`` that would do, instead of LU's "Singular matrix" in one form and finite but
    uncertified outputs in the other.
    """
    if not get_option("check_finite") or k.shape[-2] == 0:  # reads the device, like the finiteness checks
        return
    eps = float(xp.finfo(k.dtype).eps)
    kappa = condition_bound(lam, k, H0, xp)
    limit = eps ** (-2.0 / 3.0)
    if not kappa <= limit:
        lam_min = float(xp.min(lam)) if lam.ndim else float(lam)
        raise ValueError(
            f"lam = {lam_min:.3g} (its smallest entry) leaves the Mesa systems H_t + lam I with condition number "
            f"up to {kappa:.2e} ((||H_0|| + sum ||k_i||^2 + lam_max) / lam_min), beyond the {limit:.1e} at which "
            f"{dtype_name(k.dtype)} keeps a third of its digits; use lam >= {lam_min * kappa / limit:.2e} "
            "or keys of smaller norm")


def _scan_setup(q, k, v, lam, initial_state):
    xp = check_sequence(q, k, v)
    lam = _check_lam(lam, k, xp)
    G0, H0 = _check_stats(initial_state, q, k, v, xp)
    _check_conditioning(lam, k, H0, xp)
    per_channel = lam.ndim > 0 and tuple(lam.shape) == tuple(k.shape)
    return xp, lam, per_channel, G0, H0


def _lam_t(lam, per_channel, t):
    if lam.ndim == 0:
        return lam
    return lam[..., t, :] if per_channel else lam[..., t]


@workers_option
@finite_outputs
def mesa_recurrent(q, k, v, lam, *, initial_state=None, return_stats=False):
    r"""Mesa layer, closed form: ``M_t`` by a linear solve on running sums.

    Parameters
    ----------
    q, k : array ``[..., T, d_k]``
    v : array ``[..., T, d_v]``
    lam : float or array ``[..., T]`` or ``[..., T, d_k]``
        Regulariser ``lam_t > 0`` (per step, optionally per key channel).
    initial_state : tuple ``(G_0, H_0)``, optional
        Running sufficient statistics of an earlier context (module docstring);
        default zeros (no earlier context).
    return_stats : bool
        Also return the final statistics ``(G_T, H_T)``.

    Returns
    -------
    o : array ``[..., T, d_v]``
        ``o_t = M_t q_t``.
    M : array ``[..., d_v, d_k]``
        ``M_T``.
    stats : tuple ``(G_T, H_T)``, only with ``return_stats=True``.

    Notes
    -----
    .. math::

        (H_t + \Lambda_t)\, M_t^T = G_t^T, \qquad
        H_t = H_{t-1} + k_t k_t^T, \quad G_t = G_{t-1} + v_t k_t^T .
    """
    xp, lam, per_channel, G, H = _scan_setup(q, k, v, lam, initial_state)
    I = eye_like(k.shape[-1], k, xp)  # (d_k, d_k)
    outs = []
    M = None
    for t in range(k.shape[-2]):
        k_t, v_t = k[..., t, :], v[..., t, :]
        H = H + outer(k_t, k_t)  # (.., d_k, d_k)
        G = G + outer(v_t, k_t)  # (.., d_v, d_k)
        A = H + _lam_matrix(_lam_t(lam, per_channel, t), per_channel, I)  # (.., d_k, d_k), SPD
        M = xp.matrix_transpose(xp.linalg.solve(A, xp.matrix_transpose(G)))  # (.., d_k, d_k) \ (.., d_k, d_v) -> (.., d_v, d_k)
        outs.append(matvec(M, q[..., t, :]))  # (.., d_v)
    if M is None:  # T = 0: the minimiser of the earlier context alone needs lam_t; there is none
        raise ValueError("q, k, v must have at least one step (T >= 1)")
    o = xp.stack(outs, axis=-2)  # (.., T, d_v)
    return (o, M, (G, H)) if return_stats else (o, M)


def mesa_objective(q, k, v, lam, *, initial_state=None):
    """The ``T`` stated objectives of Mesa as one batched :class:`~refmem.solvers.Problem` over ``[..., T, d_v, d_k]``.

    ``f_t(M) = sum_{i<=t} ||M k_i - v_i||^2 + <M^T M, H_0> - 2 <G_0, M> + <M Lambda_t, M>``
    (the ``H_0, G_0`` terms are the earlier context's squared errors up to a
    constant). The gradient is formed from the raw keys and values.
    """
    xp, lam, per_channel, G0, H0 = _scan_setup(q, k, v, lam, initial_state)
    T, d_k, d_v = k.shape[-2], k.shape[-1], v.shape[-1]
    ones = xp.ones((T, T), dtype=k.dtype)
    causal = xp.tril(ones)[:, None, :]  # (T, 1, T): token i counts for problem t iff i <= t
    Kt = xp.matrix_transpose(k)[..., None, :, :]  # (.., 1, d_k, T)
    Vt = xp.matrix_transpose(v)[..., None, :, :]  # (.., 1, d_v, T)
    Kb = k[..., None, :, :]  # (.., 1, T, d_k)
    if lam.ndim == 0:
        lam_b = lam
    elif per_channel:
        lam_b = lam[..., :, None, :]  # (.., T, 1, d_k): column j of M_t scaled by lam_{t,j}
    else:
        lam_b = lam[..., :, None, None]  # (.., T, 1, 1)
    G0b, H0b = G0[..., None, :, :], H0[..., None, :, :]  # (.., 1, d_v, d_k), (.., 1, d_k, d_k)

    def residuals(M):
        return (M @ Kt - Vt) * causal  # (.., T, d_v, d_k) @ (.., 1, d_k, T) -> (.., T, d_v, T), masked

    def value(M):
        R = residuals(M)
        past = xp.sum((M @ H0b) * M, axis=(-2, -1)) - 2 * xp.sum(G0b * M, axis=(-2, -1))
        return xp.sum(R * R, axis=(-2, -1)) + past + xp.sum(lam_b * M * M, axis=(-2, -1))

    def grad(M):
        return 2 * (residuals(M) @ Kb) + 2 * (M @ H0b - G0b) + 2 * lam_b * M  # (.., T, d_v, T) @ (.., 1, T, d_k)

    lam_min = float(xp.min(lam)) if lam.ndim else float(lam)
    key_sq = float(xp.max(xp.sum(k * k, axis=(-2, -1)))) if k.size else 0.0
    h0 = float(xp.max(xp.sum(xp.abs(H0), axis=-1))) if H0.size else 0.0
    lam_max = float(xp.max(lam)) if lam.ndim else float(lam)
    L = 2 * (key_sq + h0 + lam_max)  # ||H_t|| <= trace(sum k k^T) + ||H_0||_inf
    x0 = xp.zeros(tuple(k.shape[:-2]) + (T, d_v, d_k), dtype=k.dtype)
    prob = Problem(xp, x0, value, grad, xp.asarray(L, dtype=k.dtype), xp.asarray(2 * lam_min, dtype=k.dtype),
                   quadratic=True)
    return prob, L / (2 * lam_min)


@finite_outputs
def mesa_iterative(q, k, v, lam, *, initial_state=None, rtol=None):
    r"""Mesa layer, iterative: conjugate gradient on the stated objective of every step.

    Same parameters and returns as :func:`mesa_recurrent` (without ``return_stats``);
    also returns the :class:`~refmem.solvers.SolveReport` of the batched CG.

    Notes
    -----
    Each :math:`f_t` is a strongly convex quadratic with Hessian
    :math:`2 (H_t + \Lambda_t) \otimes I`; CG stops when
    :math:`\|\nabla f_t\| \le \mathrm{rtol}\cdot` :meth:`~refmem.solvers.Problem.scale`, which
    bounds the relative error of :math:`M_t` by ``rtol`` (:mod:`refmem.solvers.dispatch`), with
    ``rtol`` raised to the rounding floor ``32 eps kappa``,
    :math:`\kappa \le (\sum\|k_i\|^2 + \|H_0\| + \lambda_{max})/\lambda_{min}`, and a
    :class:`~refmem.solvers.ConvergenceError` where that floor passes ``sqrt(eps)``.
    """
    prob, kappa = mesa_objective(q, k, v, lam, initial_state=initial_state)
    if k.shape[-2] == 0:
        raise ValueError("q, k, v must have at least one step (T >= 1)")
    Ms, report = minimize(prob, solver="cg", rtol=rtol)  # (.., T, d_v, d_k)
    o = (Ms @ q[..., :, :, None])[..., 0]  # (.., T, d_v, d_k) @ (.., T, d_k, 1) -> (.., T, d_v)
    return o, Ms[..., -1, :, :], report


def make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64"):
    """Random valid inputs (``q, k, v`` and the gates) in the registry's signature (:class:`~refmem.memories.MemorySpec`)."""
    return random_inputs(seed, batch, T, d_k, d_v, xp, dtype, lam=(0.3, 1.5))


def make_initial_state(seed, batch, d_k, d_v, xp, dtype="float64", *, n=5):
    """Random valid ``(G_0, H_0)``: the statistics of ``n`` random earlier tokens."""
    g = np.random.default_rng(seed)
    K = g.standard_normal(tuple(batch) + (n, d_k)) / np.sqrt(d_k)
    V = g.standard_normal(tuple(batch) + (n, d_v))
    G0 = np.swapaxes(V, -1, -2) @ K
    H0 = np.swapaxes(K, -1, -2) @ K
    return xp.asarray(np.asarray(G0, dtype=dtype)), xp.asarray(np.asarray(H0, dtype=dtype))
