r"""Expected gradients in the test vectors (format version 2; NumPy-only module: file I/O).

For every case of a memory with a backward pass (``MemorySpec.backward``,
:mod:`refmem.backward`), ``refmem vectors generate`` draws cotangents from a
seeded normal (seeded by the case's seed, so they are deterministic),

* ``do`` shaped like the read-outs ``o``,
* ``dM_T`` shaped like the final state (``dM_T.0, dM_T.1, ...`` when the state
  output has several parts, e.g. an attention cache ``(K_T, V_T)``),

runs refmem's recurrent VJP and stores, beside the forward arrays of the case
file, ``cot.<name>`` (the cotangents) and ``grad.<input>``: the gradient of

.. math::

    \mathcal L = \langle do, o\rangle + \langle dM_T, M_T\rangle

in every stored input (``q, k, v``, every gate and step size, and
``initial_state`` in the cases that start from one, so ``grad.initial_state``
is :math:`dM_0`). Gradients are stored in refmem's layout and spaces;
:mod:`refmem.conform_backward` maps them to a kernel's layout (fla's ``dg = a da``,
``dh0 = dM_0^T``).

Tolerance of a gradient
-----------------------
Derived as for the forward (:mod:`refmem.vectors`), per gradient ``g``:

.. math::

    \mathrm{tol}(g) = 8\,\epsilon\,\big(2 (T + d_k + d_v)\big)\,\max(1, \hat\kappa_g)

The chain of roundings is the forward's ``T + d_k + d_v`` and then the adjoint
recurrence's, as long again (it runs the ``T`` steps backward with inner
products of length ``d_k`` and ``d_v``). :math:`\hat\kappa_g` is the relative
condition number of that gradient, estimated like the forward's: every input
times ``1 + O(1e-7)`` in two random directions, the VJP run again with the same
cotangents, ``max |dg| / |g|`` over ``1e-7``. (The gradient is linear in the
cotangents: their own rounding adds at most ``eps`` relative, covered by the 8.)
A case in which some gradient is worse conditioned than ``1e4``, whose VJP
overflows, or whose float32 tolerance would not stay below 1 keeps its forward
arrays and lists the reason under ``backward.skipped``: no float32 kernel can be
held to its gradients. So does a case whose inputs the VJP refuses, with the
VJP's message.

Packed variable-length cases
----------------------------
A ``varlen`` case (``cu_seqlens``, :mod:`refmem.packed_sequences`) stores its
cotangents and gradients like its inputs and outputs: ``do`` along the packed
time axis, ``dM_T`` and ``grad.initial_state`` one per sequence (first axis
``N``). The VJP runs on each sequence on its own (the state resets at every
boundary, so nothing flows between sequences) and the gradients are laid back
out. Its tolerance takes ``T`` as the packed length, an upper bound on every
sequence's own chain of roundings.
"""

from __future__ import annotations

import math

import numpy as np

from .metrics import rel_error
from .packed_sequences import CU_SEQLENS, merge_gradients, split_cotangents, split_packed
from .validation import DivergenceError
from .vector_condition import DELTA, perturb, round_up
from .vector_manifest import flatten, positional_names, unflatten

__all__ = ["backward_arrays", "cotangent_kwargs", "gradient_tolerance", "run_vjp", "vjp_name"]

# Gradients worse conditioned than this are not stored (float32 tolerance would be >~ 0.1).
_KAPPA_MAX = 1e4


def vjp_name(mem) -> str:
    """``"module:function"`` of the memory's recurrent VJP, ``""`` when it has none (the manifest's ``backward``)."""
    bw = getattr(mem, "backward", None)
    if bw is None:
        return ""
    fn = bw.recurrent
    return f"{fn.__module__}:{fn.__qualname__}"


def gradient_tolerance(T: int, d_k: int, d_v: int, kappa: float) -> dict:
    """Per-dtype tolerance of one gradient: ``8 eps 2 (T + d_k + d_v) max(1, kappa)`` (module docstring)."""
    n = 2 * (T + d_k + d_v)
    return {dt: round_up(8 * float(np.finfo(dt).eps) * n * max(1.0, kappa)) for dt in ("float64", "float32")}


def draw_cotangents(seed: int, outputs: dict) -> dict:
    """``{"do": ..., "dM_T": ...}``: standard normal cotangents shaped like ``o`` and the state output(s)."""
    rng = np.random.default_rng(seed + 3)
    cot = {"do": rng.standard_normal(outputs["o"].shape)}  # [..., T, d_v]
    states = [n for n in outputs if n != "o"]  # "state", or "state_0", "state_1", ... in order
    parts = tuple(rng.standard_normal(outputs[n].shape) for n in states)
    cot["dM_T"] = parts[0] if len(parts) == 1 else parts
    return cot


def cotangent_kwargs(cotangents: dict) -> dict:
    """The stored cotangents as the VJP's keywords (``dM_T.0, dM_T.1`` back to one tuple)."""
    return unflatten(cotangents)


def run_vjp(mem, inputs: dict, params: dict, cotangents: dict) -> dict:
    """refmem's recurrent VJP on the case's inputs: the gradients of the stored inputs, flattened (``name.i``).

    A packed case: the VJP of each sequence, the gradients laid out like the inputs (module docstring).
    """
    if CU_SEQLENS in inputs:
        pieces = zip(split_packed(inputs), split_cotangents(inputs[CU_SEQLENS], cotangents))
        return merge_gradients([run_vjp(mem, one, params, cot) for one, cot in pieces], inputs)
    first = positional_names(inputs)
    rest = {n: a for n, a in inputs.items() if n not in first}
    grads = mem.backward.recurrent(*(inputs[n] for n in first), **rest, **params, **cotangent_kwargs(cotangents))
    kept = {n: (tuple(np.asarray(x) for x in g) if isinstance(g, tuple) else np.asarray(g))
            for n, g in grads.items() if n in inputs}  # e.g. no initial_state gradient when the case has none
    return flatten(kept)


def _gradient_condition(mem, inputs, params, cotangents, ref, seed) -> dict:
    """Relative condition number of every gradient: two random relative input perturbations of 1e-7."""
    rng = np.random.default_rng(seed + 4)
    kappa = dict.fromkeys(ref, 0.0)
    for _ in range(2):
        for fixed in ((), ("initial_state",), ("initial_state",) + tuple(set(inputs) - {"q", "k", "v", "initial_state"})):
            try:
                got = run_vjp(mem, perturb(inputs, rng, fixed), params, cotangents)
                break
            except (ValueError, TypeError):  # a perturbed input the memory refuses (a constrained state): hold it
                continue
        else:
            raise ValueError("no perturbation of the inputs is accepted by the memory")
        for n in ref:
            kappa[n] = max(kappa[n], rel_error(got[n], ref[n], np) / DELTA)
    return kappa


def backward_arrays(mem, seed: int, inputs: dict, params: dict, outputs: dict, cd) -> tuple[dict, dict]:
    """The ``cot.`` and ``grad.`` arrays of one case and its manifest ``backward`` entry.

    Returns ``({}, {"skipped": reason})`` when the memory has no backward pass
    or the case's gradients cannot be held to a tolerance (module docstring).
    """
    if getattr(mem, "backward", None) is None:
        return {}, {"skipped": "the memory registers no backward pass"}
    cot = draw_cotangents(seed, outputs)
    try:
        ref = run_vjp(mem, inputs, params, cot)
    except DivergenceError as exc:
        return {}, {"skipped": f"the reference gradients are not finite ({exc})"}
    except (ValueError, TypeError) as exc:  # an input the VJP does not take (e.g. a case shape only the forward has)
        return {}, {"skipped": f"the VJP refuses these inputs ({type(exc).__name__}: {exc})"}
    try:
        kappa = _gradient_condition(mem, inputs, params, cot, ref, seed)
    except DivergenceError:  # a perturbation of 1e-7 makes the VJP overflow: as ill-conditioned as it gets
        return {}, {"skipped": "a relative perturbation of 1e-7 makes the gradients overflow"}
    worst = max(kappa, key=kappa.get)
    if not math.isfinite(kappa[worst]) or kappa[worst] > _KAPPA_MAX:
        return {}, {"skipped": f"gradient {worst!r} is ill-conditioned (kappa about {kappa[worst]:.1e} > {_KAPPA_MAX:.0e})"}
    tol = {n: gradient_tolerance(cd.T, cd.d_k, cd.d_v, k) for n, k in kappa.items()}
    if any(t["float32"] >= 1 for t in tol.values()):
        return {}, {"skipped": "a gradient's float32 tolerance would not stay below 1"}
    flat_cot = flatten(cot)
    arrays = {f"cot.{n}": a for n, a in flat_cot.items()}
    arrays.update({f"grad.{n}": a for n, a in ref.items()})
    entry = {
        "cotangents": {n: {"shape": list(a.shape), "dtype": str(a.dtype)} for n, a in flat_cot.items()},
        "gradients": {n: {"shape": list(a.shape), "dtype": str(a.dtype)} for n, a in ref.items()},
        "kappa": {n: round_up(max(k, 1.0)) for n, k in kappa.items()},
        "tolerance": tol,
    }
    return arrays, entry
