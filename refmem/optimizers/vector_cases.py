r"""Test-vector entry points of two optimiser references: Muon's orthogonalisation and Adam's moments.

The flat calling convention of ``refmem vectors`` / ``refmem conform`` (as
:mod:`refmem.nested.vector_cases`): ``fn(x, **inputs, **params)``, every input
an array, every parameter a number, and ``make_inputs(seed, batch, T, d_k,
d_v, xp, dtype)`` draws a case (``d_out = d_v``, ``d_in = d_k``).

Muon's orthogonalisation (spec ``muon``)::

    muon_orthogonalization_vectors(x, *, ns_steps) -> (polar, quintic)

``x [..., T, d_out, d_in]``: ``T`` momenta; ``polar`` their nearest orthogonal
matrices (:func:`~refmem.optimizers.orthogonalization.polar_factor`) and
``quintic`` torch.optim.Muon's ``ns_steps``-step quintic Newton-Schulz map
(in the input's dtype). A kernel's Newton-Schulz is checked against
``quintic``; an exact orthogonaliser against ``polar``.

Adam's moments (spec ``adam``)::

    adam_moments_vectors(x, *, W0, lr, beta1, beta2, eps, weight_decay) -> (m_hat, v_hat, W)

``x [..., T, d_out, d_in]``: the gradients ``g_1 .. g_T`` (fixed, so the
trajectory is a pure function of the inputs; ``weight_decay`` is AdamW's
decoupled decay); ``m_hat``, ``v_hat`` the bias-corrected moments and ``W`` the
weights after each step, all ``[..., T, d_out, d_in]``. With
``weight_decay = 0`` AdamW is Adam (the coupled and decoupled decays agree).

Registered in :data:`OPTIMIZER_VECTORS` (merged into
:func:`refmem.vectors.registry`), so ``refmem vectors generate`` writes them
and ``refmem conform`` checks an implementation against them. A case stores
its outputs by position (:mod:`refmem.flat_vectors`): ``muon``: ``o`` the
polar factors, ``state`` the quintic map; ``adam`` and ``adamw``: ``o``
``m_hat``, ``state_0`` ``v_hat``, ``state_1`` ``W``.

``adam`` cases use ``weight_decay = 0``, ``adamw`` cases ``1e-2``. A case
whose ``x`` would hold more than :data:`MAX_CASE_NUMBERS` numbers (the
``T100_d60`` shape: 400 matrices of 60 x 60) is refused by ``make_inputs``
and listed as skipped: one case file would pass 40 MB.
"""

from __future__ import annotations

import numpy as np  # randomness only: inputs are drawn in NumPy

from ..backends import namespace_of
from ..flat_vectors import FlatVectorSpec
from .adam import AdamW
from .orthogonalization import newton_schulz_quintic, polar_factor


def muon_orthogonalization_vectors(x, *, ns_steps):
    """Polar factors and Muon's quintic map of ``T`` matrices ``x [..., T, d_out, d_in]`` (module notes)."""
    return polar_factor(x), newton_schulz_quintic(x, steps=ns_steps)


def adam_moments_vectors(x, *, W0, lr, beta1, beta2, eps, weight_decay):
    """AdamW's bias-corrected moments and weights over the fixed gradients ``x [..., T, d_out, d_in]`` (module notes)."""
    xp = namespace_of(x)
    opt = AdamW(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    W, state = W0, opt.init(W0, keep_history=False)
    m_hats, v_hats, Ws = [], [], []
    for t in range(x.shape[-3]):
        W, state, _ = opt.step(W, x[..., t, :, :], state)
        m_hats.append(state.exp_avg / (1.0 - beta1 ** (t + 1)))  # (.., d_out, d_in) the first memory's minimiser
        v_hats.append(state.exp_avg_sq / (1.0 - beta2 ** (t + 1)))  # (.., d_out, d_in)
        Ws.append(W)
    return xp.stack(m_hats, axis=-3), xp.stack(v_hats, axis=-3), xp.stack(Ws, axis=-3)


# Largest x a vector case stores (2^17 float64 numbers: 1 MiB per array).
MAX_CASE_NUMBERS = 2**17


def _check_case_size(batch, T, d_k, d_v):
    """``ValueError`` when ``x [*batch, T, d_v, d_k]`` would hold more than :data:`MAX_CASE_NUMBERS` numbers."""
    n = T * d_v * d_k
    for b in batch:
        n *= b
    if n > MAX_CASE_NUMBERS:
        raise ValueError(f"x [*batch, T, d_v, d_k] would hold {n} numbers (more than {MAX_CASE_NUMBERS}): "
                         "too large for a vector file")


def muon_make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64"):
    """``T`` random momenta ``[*batch, T, d_v, d_k]`` (full rank with probability one) and ``ns_steps = 5``."""
    _check_case_size(tuple(batch), T, d_k, d_v)
    g = np.random.default_rng(seed)
    x = g.standard_normal(tuple(batch) + (T, d_v, d_k))
    return {"x": xp.asarray(np.asarray(x, dtype=dtype)), "ns_steps": 5}


def adamw_make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64"):
    """Noisy gradients around a drift (the moments stay away from zero), ``W0``, and AdamW's defaults with lr 1e-2."""
    _check_case_size(tuple(batch), T, d_k, d_v)
    g = np.random.default_rng(seed)
    shape = tuple(batch) + (d_v, d_k)
    drift = g.standard_normal(shape)
    x = drift[..., None, :, :] + 0.5 * g.standard_normal(tuple(batch) + (T, d_v, d_k))
    conv = lambda a: xp.asarray(np.asarray(a, dtype=dtype))  # noqa: E731
    return {"x": conv(x), "W0": conv(g.standard_normal(shape)), "lr": 1e-2, "beta1": 0.9, "beta2": 0.999,
            "eps": 1e-8, "weight_decay": 1e-2}


def adam_make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64"):
    """The inputs of :func:`adamw_make_inputs` with ``weight_decay = 0``: Adam's trajectory (no decay to couple or not)."""
    return {**adamw_make_inputs(seed, batch, T, d_k, d_v, xp, dtype), "weight_decay": 0.0}


OPTIMIZER_VECTORS: dict[str, FlatVectorSpec] = {
    "muon": FlatVectorSpec("muon", muon_orthogonalization_vectors, muon_make_inputs,
                           "Muon's orthogonalisation of T momenta: o the polar factors, state the 5-step quintic "
                           "Newton-Schulz map (3.4445, -4.7750, 2.0315)"),
    "adam": FlatVectorSpec("adam", adam_moments_vectors, adam_make_inputs,
                           "Adam over T fixed gradients (lr 1e-2, betas 0.9, 0.999, weight_decay 0): o the "
                           "bias-corrected first moments, state_0 the second, state_1 the weights after each step"),
    "adamw": FlatVectorSpec("adamw", adam_moments_vectors, adamw_make_inputs,
                            "AdamW over T fixed gradients (lr 1e-2, betas 0.9, 0.999, decoupled weight_decay 1e-2): "
                            "o the bias-corrected first moments, state_0 the second, state_1 the weights after each step"),
}

__all__ = ["MAX_CASE_NUMBERS", "OPTIMIZER_VECTORS", "adam_make_inputs", "adam_moments_vectors", "adamw_make_inputs",
           "muon_make_inputs", "muon_orthogonalization_vectors"]
