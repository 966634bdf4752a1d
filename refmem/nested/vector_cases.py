r"""Test-vector entry points of the CMS (NLx-70..74) and the HOPE block (NLx-94..97): flat calling conventions and random inputs.

``refmem vectors`` and ``refmem conform`` call an implementation as
``fn(x, **inputs, **params)``: every input is an array or a tuple of arrays
(a tuple is stored as ``name.0, name.1, ...``) and every parameter a number.
These wrappers give the CMS (:func:`~refmem.nested.cms.cms_recurrent`) and the
HOPE block (:func:`~refmem.nested.hope.hope_recurrent`) that shape.

CMS (``spec cms``)::

    cms_vectors(x, *, targets, cms_params, cms_chunk_1, cms_chunk_2, cms_chunk_3, cms_eta) -> (y, blocks)

three sequential blocks, ``cms_params = (W1_1, W2_1, W1_2, W2_2, W1_3, W2_3)``
(``W1 [d, h]``, ``W2 [h, d]``), chunk sizes ``cms_chunk_l``, loss ``1/2||y_t -
target_t||^2``; outputs ``y [..., T, d]`` and the blocks after step ``T``.

HOPE (``spec hope``)::

    hope_vectors(x, *, targets, W_q, memories, cms_params, chunk_size, memory_chunk_size,
                 cms_chunk_1, cms_chunk_2, cms_eta, eta_max, eta_bias, alpha_bias) -> y

``memories = (W1_k, W2_k, W1_v, W2_v, W1_eta, W2_eta, W1_alpha, W2_alpha,
W1_memory, W2_memory)`` (:data:`~refmem.nested.self_modifying_titans.MEMORY_NAMES`
order), two CMS blocks; output ``y [..., T, d]``.

Inputs are drawn at the sizes the specs' stability arguments assume:
tokens and weights of unit scale (weights ``1/sqrt(fan_in)``), the CMS step
``0.05 / d`` on raw tokens (its gradients grow like ``||x||^2 = d``) and
``0.05`` inside HOPE (its CMS reads the Titans outputs, of norm about 1).
"""

from __future__ import annotations

import numpy as np  # randomness only: inputs are drawn in NumPy

from ..flat_vectors import FlatVectorSpec
from .cms import cms_recurrent
from .hope import hope_recurrent
from .self_modifying_titans import MEMORY_NAMES


def _pairs(flat, name):
    if not isinstance(flat, tuple) or len(flat) % 2:
        raise TypeError(f"{name} must be a flat tuple (W1, W2, W1, W2, ...); got {type(flat).__name__}")
    return tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))


def cms_vectors(x, *, targets, cms_params, cms_chunk_1, cms_chunk_2, cms_chunk_3, cms_eta):
    """The CMS in the flat vector convention (module notes); returns ``(y, (W1_1, W2_1, ..., W2_3))``."""
    blocks = _pairs(cms_params, "cms_params")
    y, params = cms_recurrent(x, blocks, (cms_chunk_1, cms_chunk_2, cms_chunk_3), cms_eta, targets=targets)
    return y, tuple(W for pair in params for W in pair)


def hope_vectors(x, *, targets, W_q, memories, cms_params, chunk_size, memory_chunk_size, cms_chunk_1, cms_chunk_2,
                 cms_eta, eta_max, eta_bias, alpha_bias):
    """The HOPE block in the flat vector convention (module notes); returns ``y``."""
    mem = dict(zip(MEMORY_NAMES, _pairs(memories, "memories")))
    if len(mem) != len(MEMORY_NAMES):
        raise ValueError(f"memories must hold {2 * len(MEMORY_NAMES)} arrays ({MEMORY_NAMES}, W1 and W2 each)")
    y, _ = hope_recurrent(x, W_q, cms_params=_pairs(cms_params, "cms_params"), cms_chunk_sizes=(cms_chunk_1, cms_chunk_2),
                          cms_eta=cms_eta, targets=targets, memories=mem, chunk_size=chunk_size,
                          memory_chunk_size=memory_chunk_size, eta_max=eta_max, eta_bias=eta_bias, alpha_bias=alpha_bias)
    return y


def _mlp_pair(g, d, h, *, identity=False, scale=1.0):
    W1 = scale * g.standard_normal((d, h)) / np.sqrt(h)
    W2 = scale * g.standard_normal((h, d)) / np.sqrt(d) + (np.eye(h, d) if identity else 0.0)
    return W1, W2


def _check_square(d_k, d_v):
    if d_k != d_v:
        raise ValueError(f"the system maps d to d: d_k must equal d_v; got {d_k}, {d_v}")


def cms_make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64"):
    """Random inputs of :func:`cms_vectors` (``d = d_k = d_v``, hidden size ``d``)."""
    _check_square(d_k, d_v)
    g = np.random.default_rng(seed)
    d, batch = d_k, tuple(batch)
    conv = lambda a: xp.asarray(np.asarray(a, dtype=dtype))  # noqa: E731
    blocks = tuple(conv(W) for _ in range(3) for W in _mlp_pair(g, d, d))
    return {"x": conv(g.standard_normal(batch + (T, d))), "targets": conv(g.standard_normal(batch + (T, d))),
            "cms_params": blocks, "cms_chunk_1": 8, "cms_chunk_2": 4, "cms_chunk_3": 1, "cms_eta": 0.05 / d}


def hope_make_inputs(seed, batch, T, d_k, d_v, xp, dtype="float64"):
    """Random inputs of :func:`hope_vectors` (``d = d_k = d_v``, hidden size ``d``)."""
    _check_square(d_k, d_v)
    g = np.random.default_rng(seed)
    d, batch = d_k, tuple(batch)
    conv = lambda a: xp.asarray(np.asarray(a, dtype=dtype))  # noqa: E731
    memories = tuple(conv(W) for _ in MEMORY_NAMES for W in _mlp_pair(g, d, d, identity=True, scale=0.3))
    blocks = tuple(conv(W) for _ in range(2) for W in _mlp_pair(g, d, d))
    return {"x": conv(g.standard_normal(batch + (T, d))), "targets": conv(g.standard_normal(batch + (T, d))),
            "W_q": conv(np.eye(d) + 0.3 * g.standard_normal((d, d)) / np.sqrt(d)), "memories": memories,
            "cms_params": blocks, "chunk_size": 4, "memory_chunk_size": 2, "cms_chunk_1": 8, "cms_chunk_2": 2,
            "cms_eta": 0.05, "eta_max": 0.5, "eta_bias": 0.0, "alpha_bias": 4.0}


FLAT_VECTORS: dict[str, FlatVectorSpec] = {
    "cms": FlatVectorSpec("cms", cms_vectors, cms_make_inputs,
                          "CMS: three sequential residual MLP blocks (C = 8, 4, 1), squared-error error terms; "
                          "outputs y and the blocks after step T"),
    "hope": FlatVectorSpec("hope", hope_vectors, hope_make_inputs,
                           "HOPE: self-modifying Titans (C = 4, memory C = 2) then two CMS blocks (C = 8, 2); output y"),
}

__all__ = ["FLAT_VECTORS", "FlatVectorSpec", "cms_make_inputs", "cms_vectors", "hope_make_inputs", "hope_vectors"]
