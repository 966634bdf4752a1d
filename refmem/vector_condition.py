r"""How test vectors estimate a condition number and round a tolerance (NumPy-free arithmetic on the case's arrays).

Both the outputs' tolerance (:mod:`refmem.vectors`) and each gradient's
(:mod:`refmem.vector_gradients`) are ``8 eps n max(1, kappa)`` with ``kappa``
a relative condition number estimated by rerunning the computation on inputs
perturbed by a relative :data:`DELTA` in random directions (:func:`perturb`),
and are stored rounded up to two digits (:func:`round_up`) so that last-bit
differences between machines do not change the files.
"""

from __future__ import annotations

import math

from .packed_sequences import CU_SEQLENS
from .vector_manifest import positional_names

# Relative size of the input perturbation that estimates a condition number.
DELTA = 1e-7


def perturb(inputs, rng, fixed=()):
    """Every input times ``1 + O(1e-7)`` in a random direction, except the names in ``fixed``."""
    gates = set(inputs) - set(positional_names(inputs)) - {"initial_state"}
    pert = {}
    for n, a in inputs.items():
        if n in fixed or n == CU_SEQLENS:  # sequence boundaries are not perturbed
            pert[n] = a
        elif isinstance(a, tuple):
            # one factor per array: a structured state (symmetric H_0) must keep its structure
            pert[n] = tuple(x * (1 + DELTA * rng.uniform(-1, 1)) for x in a)
        elif n in gates:  # shrink toward 0: a gate in [0, 1] stays in [0, 1], a zero gate stays 0
            pert[n] = a * (1 - DELTA * rng.uniform(0, 1, a.shape))
        else:
            pert[n] = a * (1 + DELTA * rng.uniform(-1, 1, a.shape))
    return pert


def round_up(x: float) -> float:
    """``x`` rounded up to two significant digits (stable under last-bit differences)."""
    if x <= 0:
        return 0.0
    e = math.floor(math.log10(x)) - 1
    r = math.ceil(x / 10.0**e - 1e-9) * 10.0**e
    return float(f"{r:.1e}")
