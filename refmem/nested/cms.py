r"""The continuum memory system (CMS): a chain of MLP blocks, each updated at its own frequency (NL-30, 31; NLx-70..74).

Blocks are refmem's residual MLPs :math:`\mathrm{MLP}_\ell(h) = h + W_{\ell,1}\sigma(W_{\ell,2} h)`
(:func:`refmem.memories.residual_mlp.mlp_forward`; parameters
:math:`\theta_\ell = (W_{\ell,1} [d, h], W_{\ell,2} [h, d])`). Variants:

- ``"sequential"`` (NLx-70, 73): :math:`y_t = \mathrm{MLP}_K(\cdots \mathrm{MLP}_1(x_t))`;
- ``"nested"`` (NLx-72): the same chain, and block :math:`\ell + 1` is
  re-initialised from block :math:`\ell` at the start of every context of
  block :math:`\ell` (see below);
- ``"independent"`` (NLx-74): :math:`y_t = \sum_\ell w_\ell\, \mathrm{MLP}_\ell(x_t)`
  (``Agg`` a fixed weighted sum; the weights are an outer-level parameter).

**Update (NLx-71, one proximal level per block).** Block :math:`\ell` with
chunk size :math:`C_\ell` changes only at the steps :math:`i = 0 \bmod C_\ell`
(steps counted from 1), by the sum of its error terms over its chunk, all
taken at the chunk-start parameters:

.. math::

    \theta_\ell \leftarrow \operatorname*{argmin}_\theta\;
    \Big\langle \theta, \eta_\ell \sum_{t = i - C_\ell + 1}^{i} g_{\ell,t} \Big\rangle
    + \tfrac12\|\theta - \theta_\ell\|^2
    = \theta_\ell - \eta_\ell \sum_{t = i - C_\ell + 1}^{i} g_{\ell,t},
    \qquad g_{\ell,t} = \nabla_{\theta_\ell} L(y_t; \mathrm{target}_t),

a key-less linear level (:class:`~refmem.objectives.Inner` with
:class:`~refmem.retentions.LocalL2`, value :math:`-\sum g`), solved in
closed form or by conjugate gradient (``method``). The error term is the
gradient of a loss on the system's output (:mod:`refmem.losses`;
``targets`` per token); it is taken with every block at the value it had
when token ``t`` was read, which for block :math:`\ell` is its chunk-start
value. ``chunk_size=None`` freezes a block (frequency 0). Without
``targets`` there is no error term and every block stays as it is.

Read-before-write: :math:`y_t` is computed before any update of step ``t``
(its error term needs :math:`y_t`).

**Erratum (NLx-71).** The printed sum runs over :math:`t = i - C .. i`:
:math:`C + 1` terms, so the last token of every chunk is also counted in
the next one, and :math:`C = 1` is not per-step gradient descent.
``chunk_sum="printed"`` evaluates the print (each boundary term at its own
step's parameters) for the demonstration; the default sums the chunk's
:math:`C` terms.

**Nested variant (NLx-72).** "The initial state of block :math:`s + 1` is
meta-learned in level :math:`s`; each block is re-initialised after its
context, i.e. after :math:`\lceil C_s / C_{s+1}\rceil` of its steps."
Blocks are ordered slowest first (:math:`C_1 \ge C_2 \ge \dots`, each
:math:`C_{s+1}` dividing :math:`C_s`), and at the start of each step
:math:`t = m C_s + 1` (``m >= 1``) block :math:`s + 1` is reset to its
initial state :math:`\Phi_{s+1}`. refmem's choice for :math:`\Phi_{s+1}`
(the meta-learning argmin is an outer-loop problem this forward pass does
not solve): ``reinit_from="slower"`` (default): the slower block's current
parameters :math:`\theta_s` (knowledge flows from the slower level to the
faster one; blocks must have one shape); ``reinit_from="initial"``: the
block's own initial parameters (a meta-learned initial state held fixed).

**Chunk-parallel evaluation** (:func:`cms_chunked`): between two update
steps no block changes, so the outputs and error terms of all tokens of
such a segment (length ``gcd`` of the chunk sizes) are computed in one
batched call with the segment-start parameters; it equals the
token-by-token :func:`cms_recurrent` up to summation order.
"""

from __future__ import annotations

import math

from ..backends import namespace_of
from ..level import Level, solve
from ..linalg import broadcast_like
from ..losses import get_loss
from ..memories.residual_mlp import check_params, mlp_forward
from ..objectives import Inner
from ..retentions import LocalL2
from ..validation import check_arrays, finite_outputs
from .runner import run
from .system import FROZEN, NestedLevel, NestedSystem, Signal

VARIANTS = ("sequential", "nested", "independent")


def cms_block_level(eta) -> Level:
    r"""Block :math:`\ell`'s level: :math:`\operatorname{argmin}_\theta -\langle\theta, v\rangle + \frac{1}{2\eta}\|\theta - \theta_i\|^2`, value :math:`v = -\sum_t g_t`."""
    return Level(Inner(), LocalL2(eta=eta), step="implicit", name="cms_block")


def block_update(params, grad_sum, eta, *, method="closed"):
    r"""Solve block :math:`\ell`'s level for both matrices: :math:`\theta - \eta \sum g` (``method`` closed or iterative)."""
    level = cms_block_level(eta)
    out = []
    for W, G in zip(params, grad_sum):
        W = broadcast_like(W, G, namespace_of(G))  # (.., a, b): a shared start becomes one state per sequence
        out.append(solve(level, W, None, -G, method=method)[0])
    return tuple(out)


def chain_forward(params, x, xp, *, variant="sequential", weights=None, activation="tanh"):
    r"""The system's output and a backward closure ``gy -> [(dW1, dW2) per block]``.

    Parameters
    ----------
    params : tuple of ``(W1 [..., d, h], W2 [..., h, d])``
    x : array ``[..., d]``

    Notes
    -----
    Chain (sequential, nested): backward runs from the last block to the
    first, each block's input gradient feeding the block before. Independent:
    :math:`\partial L/\partial \theta_\ell` is block :math:`\ell`'s backward
    applied to :math:`w_\ell\, \partial L/\partial y`.
    """
    if variant == "independent":
        outs, backs = [], []
        for (W1, W2) in params:
            o, b = mlp_forward(W1, W2, x, xp, activation)  # (.., d)
            outs.append(o)
            backs.append(b)
        y = sum(w * o for w, o in zip(weights, outs))  # (.., d)

        def backward(gy):
            return [b(w * gy)[:2] for w, b in zip(weights, backs)]

        return y, backward
    h, backs = x, []
    for (W1, W2) in params:
        h, b = mlp_forward(W1, W2, h, xp, activation)  # (.., d): block l's output is block l+1's input
        backs.append(b)

    def backward(gy):
        grads = [None] * len(backs)
        g = gy  # (.., d)
        for i in range(len(backs) - 1, -1, -1):
            gW1, gW2, g = backs[i](g)
            grads[i] = (gW1, gW2)
        return grads

    return h, backward


def _check_cms(x, params, chunk_sizes, eta, targets, variant, weights, reinit_from, chunk_sum, method):
    xp = check_arrays(x=x, targets=targets)
    if x.ndim < 2:
        raise ValueError(f"x must be [..., T, d]; got shape {tuple(x.shape)}")
    if x.shape[-2] == 0:
        raise ValueError(f"x must hold at least one step (T >= 1); got shape {tuple(x.shape)}")
    if targets is not None and tuple(targets.shape) != tuple(x.shape):
        raise ValueError(f"targets must have the shape of x {tuple(x.shape)}; got {tuple(targets.shape)}")
    if not isinstance(params, (tuple, list)) or not params:
        raise TypeError("params must be a non-empty tuple of blocks (W1 [..., d, h], W2 [..., h, d])")
    d = x.shape[-1]
    params = tuple(check_params(tuple(p) if isinstance(p, list) else p, d, xp, x.dtype, name=f"params[{i}]")
                   for i, p in enumerate(params))
    K = len(params)
    if not isinstance(chunk_sizes, (tuple, list)) or len(chunk_sizes) != K:
        raise ValueError(f"chunk_sizes must give one chunk size (int >= 1, or None: frozen) per block ({K}); got {chunk_sizes!r}")
    for c in chunk_sizes:
        if c is not None and not (isinstance(c, int) and not isinstance(c, bool) and c >= 1):
            raise ValueError(f"chunk_sizes must be ints >= 1 or None (frozen); got {chunk_sizes!r}")
    etas = tuple(eta) if isinstance(eta, (tuple, list)) else (eta,) * K
    if len(etas) != K or not all(isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) and e > 0
                                 for e in etas):
        raise ValueError(f"eta must be a number > 0 or one per block ({K}); got {eta!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
    if variant == "independent":
        if weights is None or len(weights) != K or not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
            raise ValueError(f"the independent variant needs weights: one finite number per block ({K}); got {weights!r}")
    elif weights is not None:
        raise ValueError(f"weights aggregate the independent variant only; got weights with variant {variant!r}")
    if reinit_from not in ("slower", "initial"):
        raise ValueError(f"reinit_from must be 'slower' or 'initial'; got {reinit_from!r}")
    if variant == "nested":
        for s in range(K - 1):
            a, b = chunk_sizes[s], chunk_sizes[s + 1]
            if a is None or b is None or a % b:
                raise ValueError(f"the nested variant orders blocks slowest first with every chunk size a multiple of the "
                                 f"next (C_s = m C_(s+1)); got chunk_sizes {chunk_sizes!r}")
            if reinit_from == "slower" and tuple(params[s][0].shape[-2:]) != tuple(params[s + 1][0].shape[-2:]):
                raise ValueError("reinit_from='slower' copies a block into the next: every block needs one hidden size")
    if weights is not None:
        weights = tuple(float(w) for w in weights)  # Python floats: a NumPy scalar would turn other backends' arrays into NumPy
    if chunk_sum not in ("chunk", "printed"):
        raise ValueError(f"chunk_sum must be 'chunk' (C terms) or 'printed' (NLx-71 as printed, C + 1 terms); got {chunk_sum!r}")
    if method not in ("closed", "iterative"):
        raise ValueError(f"method must be 'closed' or 'iterative'; got {method!r}")
    return xp, params, tuple(chunk_sizes), tuple(float(e) for e in etas), weights


def _reinit_due(chunk_sizes, t, s):
    """Block ``s + 1`` starts a new context at step ``t``: ``t = m C_s + 1`` with ``m >= 1``."""
    return t > 1 and (t - 1) % chunk_sizes[s] == 0


def _add(a, b):
    return b if a is None else tuple(x + y for x, y in zip(a, b))


@finite_outputs
def cms_recurrent(x, params, chunk_sizes, eta, *, targets=None, loss="squared_error", variant="sequential",
                  weights=None, reinit_from="slower", activation="tanh", method="closed", chunk_sum="chunk",
                  return_trace=False):
    r"""The CMS token by token (the reference form).

    Parameters
    ----------
    x : array ``[..., T, d]``
    params : tuple of ``(W1 [..., d, h], W2 [..., h, d])``, one per block, in the order the input meets them
    chunk_sizes : tuple of int or None
        :math:`C_\ell` per block; ``None``: frozen.
    eta : float or tuple of float
        :math:`\eta_\ell > 0`.
    targets : array ``[..., T, d]``, optional
        Per-token targets of the loss on ``y_t``; without them no block updates.
    loss : str or Loss
    variant : {"sequential", "nested", "independent"}
    weights : tuple of float
        ``Agg`` weights of the independent variant.
    reinit_from : {"slower", "initial"}
        The nested variant's initial state (module notes).
    method : {"closed", "iterative"}
        How every block's level is solved.
    chunk_sum : {"chunk", "printed"}
        ``"printed"``: NLx-71 as printed (``C + 1`` terms; the erratum demonstration).
    return_trace : bool
        Also return a list, per step, of the tuple of block parameters used for that step's output.

    Returns
    -------
    y : array ``[..., T, d]``
    params : tuple of ``(W1, W2)`` after step ``T``
    trace : list (only with ``return_trace``)
    """
    xp, params, chunk_sizes, etas, weights = _check_cms(x, params, chunk_sizes, eta, targets, variant, weights,
                                                        reinit_from, chunk_sum, method)
    lossf = get_loss(loss)
    K, T = len(params), x.shape[-2]
    initial = params
    sums = [None] * K  # the running chunk sums of the error terms
    last = [None] * K  # the last term of the previous chunk (for chunk_sum="printed")
    outs, trace = [], []
    for t in range(1, T + 1):
        if variant == "nested":
            for s in range(K - 1):
                if _reinit_due(chunk_sizes, t, s):  # block s+1 starts a new context of block s
                    fresh = params[s] if reinit_from == "slower" else initial[s + 1]
                    params = params[:s + 1] + (fresh,) + params[s + 2:]
        x_t = x[..., t - 1, :]  # (.., d)
        y_t, backward = chain_forward(params, x_t, xp, variant=variant, weights=weights, activation=activation)
        outs.append(y_t)
        if return_trace:
            trace.append(params)
        if targets is None:
            continue
        grads = backward(lossf.grad(y_t, targets[..., t - 1, :]))  # g_{l,t} at the parameters that produced y_t
        new = list(params)
        for i in range(K):
            C = chunk_sizes[i]
            if C is None:
                continue
            sums[i] = _add(sums[i], grads[i])
            if t % C == 0:
                total = sums[i] if chunk_sum == "chunk" or last[i] is None else _add(sums[i], last[i])
                new[i] = block_update(params[i], total, etas[i], method=method)
                sums[i] = None
                last[i] = grads[i]
        params = tuple(new)
    y = xp.stack(outs, axis=-2)  # (.., T, d)
    return (y, params, trace) if return_trace else (y, params)


def _segment_length(chunk_sizes):
    live = [c for c in chunk_sizes if c is not None]
    return math.gcd(*live) if live else None


@finite_outputs
def cms_chunked(x, params, chunk_sizes, eta, *, targets=None, loss="squared_error", variant="sequential",
                weights=None, reinit_from="slower", activation="tanh", method="closed"):
    r"""The CMS evaluated a segment at a time (chunk-parallel): the same computation as :func:`cms_recurrent`.

    Within a segment of ``g = gcd(C_1, ..., C_K)`` tokens no block changes, so
    the segment's outputs and error terms are one batched forward and
    backward with the segment-start parameters (an extra token axis before
    the feature axis); block :math:`\ell`'s chunk sum adds the segment's
    summed terms. Same arguments and returns as :func:`cms_recurrent`
    (without ``chunk_sum`` and ``return_trace``).
    """
    xp, params, chunk_sizes, etas, weights = _check_cms(x, params, chunk_sizes, eta, targets, variant, weights,
                                                        reinit_from, "chunk", method)
    lossf = get_loss(loss)
    K, T = len(params), x.shape[-2]
    initial = params
    seg = _segment_length(chunk_sizes) or T
    if targets is None:
        seg = T  # nothing changes: one segment
    sums = [None] * K
    outs = []
    for start in range(0, T, seg):
        stop = min(start + seg, T)
        t = start + 1  # the segment's first step
        if variant == "nested":
            for s in range(K - 1):
                if _reinit_due(chunk_sizes, t, s):
                    fresh = params[s] if reinit_from == "slower" else initial[s + 1]
                    params = params[:s + 1] + (fresh,) + params[s + 2:]
        xs = x[..., start:stop, :]  # (.., n, d): the segment's tokens
        tok = tuple((W1[..., None, :, :], W2[..., None, :, :]) for W1, W2 in params)  # (.., 1, d, h): one value for all n
        ys, backward = chain_forward(tok, xs, xp, variant=variant, weights=weights, activation=activation)
        outs.append(ys)  # (.., n, d)
        if targets is None:
            continue
        grads = backward(lossf.grad(ys, targets[..., start:stop, :]))  # per token (.., n, d, h), (.., n, h, d)
        new = list(params)
        for i in range(K):
            C = chunk_sizes[i]
            if C is None:
                continue
            sums[i] = _add(sums[i], tuple(xp.sum(G, axis=-3) for G in grads[i]))  # (.., d, h): the segment's terms
            if stop % C == 0:
                new[i] = block_update(params[i], sums[i], etas[i], method=method)
                sums[i] = None
        params = tuple(new)
    return xp.concat(outs, axis=-2), params


def printed_chunk_terms(i: int, C: int):
    r"""The tokens NLx-71's printed sum adds at update step ``i``: ``t = i - C .. i`` (``C + 1`` of them, from 1)."""
    return [t for t in range(i - C, i + 1) if t >= 1]


def chunk_terms(i: int, C: int):
    """The tokens refmem's update at step ``i`` adds: ``t = i - C + 1 .. i`` (``C`` of them)."""
    return list(range(i - C + 1, i + 1))


def cms_system(params, chunk_sizes, eta, *, loss="squared_error", variant="sequential", weights=None,
               activation="tanh", method="closed") -> NestedSystem:
    r"""The (sequential or independent) CMS declared as a nested system for :func:`refmem.nested.run`.

    Components ``block1 .. blockK`` with period :math:`C_\ell` (``FROZEN`` for
    ``None``), each accumulating its error term ``g<l>`` over its chunk; the
    signals ``g<l>`` read every block's value at the start of the step
    (``@prev``) and the sample ``(x_t, target_t)``. No block reads another's
    same-step value, so blocks of one chunk size share a level. The nested
    variant's re-initialisation is not a declared read; use :func:`cms_recurrent`.
    """
    if variant == "nested":
        raise ValueError("cms_system declares the sequential and independent variants; the nested variant's "
                         "re-initialisation is in cms_recurrent / cms_chunked")
    K = len(params)
    weights = None if weights is None else tuple(float(w) for w in weights)
    names = tuple(f"block{i + 1}" for i in range(K))
    etas = tuple(eta) if isinstance(eta, (tuple, list)) else (eta,) * K
    lossf = get_loss(loss)

    def gradients(ctx):
        x_t, target = ctx["data"]
        xp = check_arrays(x=x_t)
        blocks = tuple(ctx[f"{n}@prev"] for n in names)
        y, backward = chain_forward(blocks, x_t, xp, variant=variant, weights=weights, activation=activation)
        return backward(lossf.grad(y, target))

    def term(i):
        return Signal(f"g{i + 1}", lambda ctx: ctx["all_grads"][i], reads=("all_grads",),
                      description=f"grad of the loss in block{i + 1}")

    def update(i):
        return lambda value, ctx: block_update(value, ctx[f"g{i + 1}"], etas[i], method=method)

    levels = tuple(
        NestedLevel(names[i], None, period=FROZEN, description="frozen block") if chunk_sizes[i] is None else
        NestedLevel(names[i], update(i), reads=(f"g{i + 1}",), period=chunk_sizes[i], accumulate=(f"g{i + 1}",),
                    description=f"MLP block, eta = {etas[i]}")
        for i in range(K))
    signals = (Signal("all_grads", gradients, reads=tuple(f"{n}@prev" for n in names) + ("data",),
                      description="backward of the chain"),) + tuple(term(i) for i in range(K))
    return NestedSystem(name=f"cms_{variant}", levels=levels, signals=signals)


__all__ = ["VARIANTS", "block_update", "chain_forward", "chunk_terms", "cms_block_level", "cms_chunked",
           "cms_recurrent", "cms_system", "printed_chunk_terms", "run"]
