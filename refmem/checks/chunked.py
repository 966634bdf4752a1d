"""``refmem verify`` checks of the chunked forms (MATH.md 8): chunked == recurrent for every memory that has one.

Each check draws a random problem (``T = 50`` steps, not a multiple of the chunk
size 16, a random initial state, and about a fifth of every gate set to 0 where 0
is allowed) and returns the relative error between the chunked and the
recurrent scan (outputs and final state). Tolerance 1e-10: both are exact
float64 computations of the same recurrence in different summation orders
(observed ~1e-15); Mesa's chunked form is CG stopped at 1e-13 relative
residual with condition number < 100 here, so its error is below 1e-11.
"""

from __future__ import annotations

import numpy as np  # randomness only: inputs drawn in NumPy, moved to xp

from ..backends import get_backend
from ..memories import MEMORIES
from ..metrics import rel_error
from .registry import register_check

CHUNKED_TOL = 1e-10
_ZERO_ALLOWED = {"alpha", "beta", "eta", "theta"}  # gates for which 0 is a valid value (lam must be > 0)


def _inputs(name, seed, xp, T=50, batch=(2,), d_k=6, d_v=5, **kw):
    npx = get_backend("numpy").namespace()
    spec = MEMORIES[name]
    drawn = {k: np.array(a) for k, a in spec.make_inputs(seed, batch, T, d_k, d_v, npx, **kw).items()}
    g = np.random.default_rng(seed)
    for gate in spec.gates:
        if gate in _ZERO_ALLOWED:
            drawn[gate] = np.where(g.random(drawn[gate].shape) < 0.2, 0.0, drawn[gate])
    init = {}
    if name == "mesa":
        K = g.standard_normal(batch + (4, d_k)) / np.sqrt(d_k)
        V = g.standard_normal(batch + (4, d_v))
        init["initial_state"] = (xp.asarray(np.swapaxes(V, -1, -2) @ K), xp.asarray(np.swapaxes(K, -1, -2) @ K))
    else:
        init["initial_state"] = xp.asarray(g.standard_normal(batch + (d_v, d_k)))
    if name == "titans":
        init["initial_momentum"] = xp.asarray(0.3 * g.standard_normal(batch + (d_v, d_k)))
    return {k: xp.asarray(a) for k, a in drawn.items()}, init


def chunked_error(name, xp, *, C=16, **kw):
    """Largest relative error, chunked vs recurrent, over the outputs and the final state."""
    spec = MEMORIES[name]
    inputs, init = _inputs(name, 3, xp, **kw)
    want = spec.recurrent(**inputs, **init)
    got = spec.chunked(**inputs, **init, chunk_size=C)
    return max(rel_error(got[0], want[0], xp), rel_error(got[1], want[1], xp))


def _register(name, label="", **kw):
    @register_check(name, "chunked == recurrent" + label, CHUNKED_TOL)
    def check(xp, name=name, kw=kw):
        return chunked_error(name, xp, **kw)


for _name, _spec in sorted(MEMORIES.items()):
    if _spec.chunked is not None:
        _register(_name)
for _name in ("gated_linear_attention", "longhorn"):
    if MEMORIES[_name].chunked is not None:
        _register(_name, " (per channel)", per_channel=True)


def minibatch_c1_error(name, xp):
    """Mini-batch form at chunk size 1 (every chunk one step) vs the recurrence: the same computation."""
    spec = MEMORIES[name]
    inputs, init = _inputs(name, 4, xp, T=20)
    want = spec.recurrent(**inputs, **init)
    got = spec.minibatch(**inputs, **init, chunk_size=1)
    return max(rel_error(got[0], want[0], xp), rel_error(got[1], want[1], xp))


def _register_minibatch(name):
    @register_check(name, "minibatch (C = 1) == recurrent", CHUNKED_TOL)
    def check(xp, name=name):
        return minibatch_c1_error(name, xp)


for _name, _spec in sorted(MEMORIES.items()):
    if _spec.minibatch is not None:
        _register_minibatch(_name)
