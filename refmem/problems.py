"""Seeded random problems, drawn with NumPy's Generator and moved to the current backend.

Arrays made from nothing need a backend; everything here uses the current one
(:func:`refmem.use`, :func:`refmem.backend`) unless ``xp`` is given. Drawing
always happens in NumPy so the same seed gives the same numbers on every
backend.
"""

from __future__ import annotations

import numpy as np  # NumPy is the source of randomness only; arrays are moved to xp

from .backends import current_namespace


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def to_backend(a, xp=None, dtype: str = "float64"):
    """``a`` (NumPy) as an array of namespace ``xp`` (default: the current backend) and ``dtype``."""
    xp = xp or current_namespace()
    return xp.asarray(np.asarray(a, dtype=dtype))


def level_problem(seed: int, *, batch=(), d_v: int = 3, d_k: int = 4, key_scale: float = 1.0,
                  xp=None, dtype: str = "float64", keyless: bool = False):
    """A random ``(M_t, k, v)`` with ``M_t [*batch, d_v, d_k]``, ``k [*batch, d_k]``, ``v [*batch, d_v]``.

    ``keyless=True`` gives ``k = None`` and ``v`` a matrix shaped like ``M_t``.
    """
    g = rng(seed)
    batch = tuple(batch)
    M_t = g.standard_normal(batch + (d_v, d_k))
    k = key_scale * g.standard_normal(batch + (d_k,)) / np.sqrt(d_k)
    v = g.standard_normal(batch + ((d_v, d_k) if keyless else (d_v,)))
    return (to_backend(M_t, xp, dtype), None if keyless else to_backend(k, xp, dtype), to_backend(v, xp, dtype))
