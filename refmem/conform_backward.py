r"""The conformance runner for gradients: check a kernel's backward pass against refmem's expected gradients.

NumPy-only module (comparison on the host), like :mod:`refmem.conform`, whose
layouts, casting and comparison it reuses. The expected gradients come from
test vectors of format version 2 (:mod:`refmem.vector_gradients`): per case
the cotangents ``do``, ``dM_T`` and the gradients of
:math:`\mathcal L = \langle do, o\rangle + \langle dM_T, M_T\rangle` in every input.

Command line::

    refmem conform MODULE:FUNCTION --spec NAME --backward [--vjp MODULE:FUNCTION] [--layout refmem|fla] ...

(the forward outputs are checked first, as without ``--backward``, then every gradient).

Where the kernel's gradients come from
--------------------------------------
``vjp`` given (``--vjp MODULE:FUNCTION``)
    called with the kernel's own arguments (the layout's, :mod:`refmem.conform`)
    plus the cotangents of its outputs as keywords, and returns a mapping
    ``{name: gradient}``:

    * layout ``refmem``: ``vjp(q, k, v, **gates, initial_state=M0, do=do, dM_T=dM_T)``
      (``dM_T`` a tuple for a state of several parts), returning the gradients
      keyed by the argument names (``q, k, v``, each gate, ``initial_state``),
      as refmem's own VJPs do (:mod:`refmem.backward`);
    * layout ``fla``: ``vjp(q, k, v, **gates, initial_state=h0, output_final_state=True,
      do=do, dht=dht)`` with ``do [B, T, H, V]`` and ``dht [B, H, K, V]`` (the
      cotangent of :math:`S_T = M_T^T`), returning fla's names ``dq, dk, dv``,
      ``dbeta``, ``dg`` (or ``dgk``), ``dh0`` and ``d<gate>`` for any other gate.
``vjp`` omitted: torch autograd
    the kernel's outputs must be torch tensors that require grad. refmem imports
    torch (only then), hands the kernel leaf tensors (``convert``'s result, or
    ``torch.from_numpy``, detached and set to require grad) and calls
    ``torch.autograd.grad`` on ``(o, state)`` with the cotangents. An input the
    outputs do not depend on gets a zero gradient (so a kernel that ignores the
    initial state's gradient fails on ``dh0``).

Gradients, names and spaces
---------------------------
Reported as ``d<argument>`` in the refmem layout (``dq``, ``dbeta``,
``dinitial_state``) and by fla's names in the fla layout. fla's spaces follow
by the chain rule from refmem's (:mod:`refmem.backward.fla_names`): the kernel
receives ``q sqrt(K)`` and scales it by ``1/sqrt(K)``, so :math:`dq_{fla} = dq / \sqrt K`;
its forget gate is ``g = log a`` of what the state keeps, so ``dg = a da``
(``dgk`` per key channel); its state is :math:`S = M^T`, so ``dh0 = dM_0^T``.
A case whose forget gate the forward layout does not send as the log of what
the state keeps is skipped (with the reason), never passed.

Tolerance of a gradient
-----------------------
The vector file's tolerance of that gradient for the dtype compared:
``8 eps 2 (T + d_k + d_v) max(1, kappa_g)`` (:mod:`refmem.vector_gradients`),
under the forward's pass criterion (``max`` and ``rms`` relative error, per
gradient; :func:`refmem.conform.compare`). The fla layout's transposes, axis
moves and the constant ``1/sqrt(K)`` leave a relative error unchanged. ``dg = a da``
rescales entry by entry: a kernel whose ``da`` carries an error ``e`` with
``max|e| <= tol max|da|`` has ``max|a e| <= max|a| tol max|da|``, so ``dg`` is
compared under ``tol * max|a| max|da| / max|dg|`` (at least ``tol``; the drawn
gates keep ``a`` in a band that makes this factor about 1, and an all-zero ``dg``
is compared absolutely).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from typing import Callable

import numpy as np

from .backward.fla_names import FORGET_GATES, to_fla
from .conform import (ConformResult, load_or_generate, passed_or_raise, select_cases, ConvertError, Row, TargetError, _accepts, _Cast, _check_arguments, _fla_call,
                      _lead_to_bh, _log_gate, _names, _NotApplicable, _refmem_call, _seq_to_fla, _gate_to_fla, compare,
                      resolve, to_numpy)
from .vector_manifest import unflatten
from .vectors import Case, VectorError, generate, load, registry

__all__ = ["assert_backward_conforms", "check_backward", "expected_gradients"]


class NoGradientsError(ValueError):
    """The spec or the vector set has no expected gradients (a usage error: nothing to compare)."""


# ---------------------------------------------------------------- expected gradients in a layout


def _grad_label(name: str) -> str:
    """The refmem layout's name of the gradient of input ``name``: ``dq``, ``dbeta``, ``dinitial_state`` (``.i`` kept)."""
    return f"d{name}"


def _unflatten_grads(case: Case) -> dict:
    """The case's gradients with a state of several parts back as one tuple (the VJP's own form)."""
    return unflatten(case.gradients)


def expected_gradients(case: Case, layout: str, dtype: str) -> dict:
    """``{gradient name: (expected float64 array, tolerance)}`` of ``case`` in ``layout`` (module docstring).

    Raises ``_NotApplicable`` for a case the layout cannot express.
    """
    tol = {n: t[dtype] for n, t in case.gradient_tolerance.items()}
    if layout == "refmem":
        return {_grad_label(n): (g, tol[n]) for n, g in case.gradients.items()}
    grads = _unflatten_grads(case)
    if isinstance(grads.get("initial_state"), tuple):
        raise _NotApplicable("the fla layout needs a single matrix state; this memory's initial state has several parts")
    inputs = case.inputs
    lead = tuple(inputs["k"].shape[:-2])
    K = inputs["k"].shape[-1]
    mapped = to_fla(case.spec, grads, inputs, scale=1.0 / math.sqrt(K))  # refmem's names -> fla's, still refmem axes
    if "alpha" in inputs and case.spec not in FORGET_GATES:
        raise _NotApplicable(f"fla's gate convention is defined for {', '.join(sorted(FORGET_GATES))} and memories "
                             f"without a forget gate; {case.spec}'s alpha has no fla name")
    gate, meaning = FORGET_GATES.get(case.spec, (None, None))
    out = {}
    for name, g in mapped.items():
        source = {"dq": "q", "dk": "k", "dv": "v", "dh0": "initial_state", "dg": gate, "dgk": gate}.get(name, name[1:])
        t = tol[source]
        if name in ("dg", "dgk"):
            a = inputs[gate] if meaning == "kept" else 1 - inputs[gate]
            t = t * _rescale_factor(a, grads[gate], g)
        if name == "dh0":
            B, H = _lead_to_bh(lead)
            arr = g.reshape((B, H) + g.shape[len(lead):])  # [B, H, K, V] (to_fla transposed it)
        elif g.ndim == inputs["k"].ndim:  # a sequence or a per-channel gate [..., T, d]
            arr = _seq_to_fla(g, lead)
        else:  # a per-step gate [..., T]
            arr = _gate_to_fla(g, lead)
        out[name] = (arr, t)
    return out


def _rescale_factor(a, da, dg) -> float:
    """``max|a| max|da| / max|dg|`` (at least 1): how much ``dg = a da`` can magnify a relative error (module docstring)."""
    top = float(np.max(np.abs(a))) * float(np.max(np.abs(da)))
    bottom = float(np.max(np.abs(dg)))
    if bottom == 0 or top == 0:
        return 1.0  # an all-zero dg is compared absolutely (refmem.metrics.rel_error)
    return max(1.0, top / bottom)


def _fla_gate_consistent(case: Case, call_kwargs: dict, dtype) -> str | None:
    """None when the forward layout sends the forget gate as the log of what the state keeps; else why not."""
    gate, meaning = FORGET_GATES.get(case.spec, (None, None))
    if gate is None:
        return None
    sent = call_kwargs.get("gk", call_kwargs.get("g"))
    if sent is None:
        return f"the fla layout does not send {case.spec}'s gate {gate!r} as g or gk"
    kept = case.inputs[gate] if meaning == "kept" else 1 - case.inputs[gate]
    want = _log_gate(_gate_to_fla(kept, tuple(case.inputs["k"].shape[:-2])).astype(dtype))
    if np.array_equal(to_numpy(sent), want):
        return None
    return (f"the fla layout sends {case.spec}'s gate {gate!r} as something other than g = log({gate if meaning == 'kept' else '1 - ' + gate}) "
            "(what the state keeps): its dg is not defined by fla's convention")


# ---------------------------------------------------------------- the kernel's gradients


def _cotangents(case: Case, layout: str, cast) -> dict:
    """The case's cotangents in the layout: refmem ``do, dM_T``; fla ``do [B, T, H, V], dht = dM_T^T [B, H, K, V]``."""
    do, dM_T = case.cotangents["do"], case.cotangents["dM_T"]
    if layout == "refmem":
        return {"do": cast(do), "dM_T": cast(dM_T)}
    lead = tuple(case.inputs["k"].shape[:-2])
    B, H = _lead_to_bh(lead)
    dht = np.swapaxes(dM_T.reshape((B, H) + dM_T.shape[len(lead):]), -1, -2)  # dM_T^T: (B, H, K, V)
    return {"do": cast(_seq_to_fla(do, lead)), "dht": cast(dht)}


def _from_vjp(vjp, call, cot: dict, layout: str) -> dict:
    """The ``vjp``'s mapping, names as the layout reports them; a state of several parts flattened (``.i``)."""
    raw = vjp(*call.args, **call.kwargs, **cot)
    if not hasattr(raw, "items"):
        raise TypeError(f"the vjp returned a {type(raw).__name__}; it must return a mapping {{gradient name: array}}")
    out = {}
    for n, g in raw.items():
        label = _grad_label(n) if layout == "refmem" else n
        if isinstance(g, (tuple, list)):
            out.update({f"{label}.{i}": to_numpy(x) for i, x in enumerate(g)})
        elif g is not None:
            out[label] = to_numpy(g)
    return out


def _torch_leaves(call, convert, layout: str):
    """The call's arrays as torch leaf tensors that require grad; returns ``(args, kwargs, {label: leaf})``."""
    import torch

    def leaf(a, where):
        t = convert(a) if convert is not None else torch.from_numpy(a)
        if not isinstance(t, torch.Tensor):
            raise ConvertError(f"returned a {type(t).__name__} for {where}; the torch-autograd route needs torch tensors "
                               "(or pass --vjp)")
        return t.detach().requires_grad_(True)

    def label(name):
        if layout == "fla":
            return "dh0" if name == "initial_state" else f"d{name}"
        return _grad_label(name)

    leaves = {}
    args = []
    for name, a in zip(("q", "k", "v"), call.args):
        args.append(leaf(a, name))
        leaves[label(name)] = args[-1]
    kwargs = {}
    for name, a in call.kwargs.items():
        if isinstance(a, np.ndarray):
            kwargs[name] = leaves[label(name)] = leaf(a, name)
        elif isinstance(a, tuple) and all(isinstance(x, np.ndarray) for x in a):
            kwargs[name] = tuple(leaf(x, f"{name}[{i}]") for i, x in enumerate(a))
            leaves.update({f"{label(name)}.{i}": x for i, x in enumerate(kwargs[name])})
        else:
            kwargs[name] = a
    return tuple(args), kwargs, leaves


def _from_autograd(fn, call, convert, cot: dict, layout: str, n_states: int) -> dict:
    """torch autograd through the kernel: ``d<input> = (d(o, state)/d input)^T (do, dM_T)``."""
    import torch

    args, kwargs, leaves = _torch_leaves(call, convert, layout)
    raw = fn(*args, **kwargs)
    flat = list(raw) if isinstance(raw, (tuple, list)) else [raw]
    if len(flat) == 2 and isinstance(flat[1], (tuple, list)) and n_states > 1:
        flat = [flat[0], *flat[1]]
    flat = [x for x in flat if x is not None]
    if len(flat) != 1 + n_states:
        raise TypeError(f"the kernel returned {len(flat)} output(s); the backward check needs o and the final state "
                        f"({1 + n_states} arrays) to apply their cotangents")
    cot_parts = [cot["do"]] + (list(cot["dM_T" if layout == "refmem" else "dht"]) if n_states > 1
                               else [cot["dM_T" if layout == "refmem" else "dht"]])
    outs, grads_out = [], []
    for i, (y, c) in enumerate(zip(flat, cot_parts)):
        if not isinstance(y, torch.Tensor) or not y.requires_grad:
            what = "o" if i == 0 else "the final state"
            raise TypeError(f"output {what} is not a torch tensor that requires grad (its inputs were leaves that "
                            "require grad): pass --vjp MODULE:FUNCTION for a kernel outside torch autograd")
        c = to_numpy(c)
        if tuple(c.shape) != tuple(y.shape):
            raise TypeError(f"output {'o' if i == 0 else 'the final state'} has shape {tuple(y.shape)}, the layout "
                            f"expects {tuple(c.shape)}")
        outs.append(y)
        grads_out.append(torch.as_tensor(c, dtype=y.dtype, device=y.device))
    names = list(leaves)
    got = torch.autograd.grad(outs, [leaves[n] for n in names], grads_out, allow_unused=True)
    return {n: (np.zeros(tuple(leaves[n].shape)) if g is None else to_numpy(g.detach().cpu()))
            for n, g in zip(names, got)}


# ---------------------------------------------------------------- the check


def _load_with_gradients(spec: str, vectors, cases) -> list[Case]:
    """The cases of ``spec`` with their gradients; ``NoGradientsError`` when there are none to compare."""
    mem = registry()[spec]
    if getattr(mem, "backward", None) is None:
        with_bw = sorted(n for n, m in registry().items() if getattr(m, "backward", None) is not None)
        raise NoGradientsError(f"spec {spec!r} has no backward pass in this refmem, so no expected gradients; "
                               f"--backward checks: {', '.join(with_bw)}")
    loaded = load_or_generate(vectors, spec)
    if vectors is not None and not any(c.gradients for c in loaded):
            raise NoGradientsError(f"the vectors in {os.fspath(vectors)!r} hold no gradients for {spec!r} (format "
                                   "version 1, or written before it had a backward pass): regenerate them with "
                                   "`refmem vectors generate`")
    return select_cases(loaded, spec, cases)


def check_backward(fn: Callable, *, spec: str, vectors: str | None = None, layout: str = "refmem",
                   dtype: str = "float64", convert: Callable | None = None, vjp: Callable | None = None,
                   cases=None, name: str | None = None) -> ConformResult:
    r"""Compare a kernel's gradients with refmem's on the test vectors of ``spec``, one row per case and gradient.

    Parameters
    ----------
    fn : callable
        The kernel's forward, called as ``layout`` says (:mod:`refmem.conform`).
    spec : str
        A registered memory with a backward pass.
    vectors : str, optional
        A directory written by ``refmem vectors generate`` (format version 2);
        generated in a temporary directory when omitted.
    layout : {"refmem", "fla"}
    dtype : {"float64", "float32"}
        The dtype of the inputs and cotangents; gradients are compared with the
        float64 reference under that dtype's tolerance of each gradient.
    convert : callable, optional
        Applied to every NumPy input (and cotangent) first, as in :func:`refmem.conform.check`.
    vjp : callable, optional
        The kernel's backward (module docstring). Without it, torch autograd
        through ``fn`` (torch is imported only then).
    cases : str or iterable of str, optional
        Only these case names.
    name : str, optional
        How the result names the implementation.

    Returns
    -------
    ConformResult
        Rows named by gradient (``dq``, ``dbeta``, ``dh0``, ...); its summary
        names every gradient that differs.

    Raises
    ------
    TypeError, ValueError
        Bad arguments, named; ``NoGradientsError`` (a ``ValueError``) for a spec
        without a backward pass or vectors without gradients; ``ImportError``
        (as a ``ValueError``) when the torch-autograd route is asked for and
        torch is not installed.
    VectorError
        The vectors fail an integrity check.

    Examples
    --------
    refmem's own delta-rule VJP, in the refmem layout, passes:

    >>> from refmem.backward.delta_rule import delta_rule_vjp
    >>> from refmem.memories.delta_rule import delta_rule_recurrent
    >>> res = check_backward(delta_rule_recurrent, spec="delta_rule", vjp=delta_rule_vjp, cases=["T1", "initial_state"])
    >>> res.passed, sorted({r.output for r in res.rows})
    (True, ['dbeta', 'dinitial_state', 'dk', 'dq', 'dv'])
    """
    _check_arguments(fn, spec, vectors, layout, dtype, convert, name)
    if vjp is not None and not callable(vjp):
        raise TypeError(f"vjp must be callable or None; got {type(vjp).__name__}")
    if vjp is None:
        try:
            import torch  # noqa: F401  (only for the autograd route)
        except ImportError:
            raise ValueError("without a vjp the gradients come from torch autograd, and torch is not installed "
                             "(pip install torch, or pass vjp / --vjp MODULE:FUNCTION)") from None
    cases = _names(cases, "cases")
    target = name or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
    loaded = _load_with_gradients(spec, vectors, cases)
    result = ConformResult(target, spec, layout, dtype, noun="gradient")
    # the vjp gets NumPy arrays through convert like the kernel; the autograd route makes its own leaves
    cast = _Cast(dtype, convert if vjp is not None else None)
    accepts = _accepts(fn)
    for case in loaded:
        if not case.gradients:
            result.skipped.append((case.name, f"no gradients in the vectors ({case.meta['backward']['skipped']})"))
            continue
        try:
            call = _refmem_call(case, cast) if layout == "refmem" else _fla_call(case, cast, accepts)
            want = expected_gradients(case, layout, dtype)
            if layout == "fla":
                why = _fla_gate_consistent(case, call.kwargs, np.dtype(dtype))
                if why:
                    raise _NotApplicable(why)
            cot = _cotangents(case, layout, cast)
        except _NotApplicable as exc:
            result.skipped.append((case.name, str(exc)))
            continue
        tol_call = min(t for _, t in want.values())
        try:
            if vjp is not None:
                got = _from_vjp(vjp, call, cot, layout)
            else:
                n_states = len([n for n in case.outputs if n != "o"])
                got = _from_autograd(fn, call, convert, cot, layout, n_states)
        except (VectorError, ConvertError):
            raise
        except (Exception, SystemExit) as exc:  # the kernel's backward crashed on this case: a failing row
            result.rows.append(Row(case.name, "(backward)", math.nan, math.nan, math.nan, tol_call, False,
                                   f"raised {type(exc).__name__}: {exc}"))
            continue
        for n, (ref, tol) in want.items():
            if n not in got:
                result.rows.append(Row(case.name, n, math.nan, math.nan, math.nan, tol, False,
                                       f"not returned (returned: {', '.join(sorted(got)) or 'nothing'})"))
            else:
                result.rows.append(compare(got[n], ref, tol, case.name, n))
    return result


def assert_backward_conforms(fn: Callable, **kwargs) -> ConformResult:
    """:func:`check_backward`, raising ``AssertionError`` with the table and verdict when any gradient differs."""
    return passed_or_raise(check_backward(fn, **kwargs))


# ---------------------------------------------------------------- command line


def main(args) -> int:
    """``refmem conform ... --backward``: the forward check, then the gradients; exit 0 pass, 1 differ, 2 usage error."""
    from .conform import check, report_for_cli

    def run():
        fn = resolve(args.target, "MODULE:FUNCTION")
        convert = resolve(args.convert, "--convert") if args.convert else None
        vjp = resolve(args.vjp, "--vjp") if args.vjp else None
        if vjp is None and not _torch_installed():
            raise ValueError("--backward without --vjp takes the gradients from torch autograd, and torch is not "
                             "installed (pip install torch, or pass --vjp MODULE:FUNCTION)")
        _has_backward(args.spec)
        with tempfile.TemporaryDirectory(prefix="refmem-vectors-") as tmp:
            vectors = args.vectors
            if vectors is None:  # generated once for both checks
                generate(tmp, [args.spec])
                vectors = tmp
            forward = check(fn, spec=args.spec, vectors=vectors, layout=args.layout, dtype=args.dtype,
                            convert=convert, outputs=args.outputs, name=args.target)
            backward = check_backward(fn, spec=args.spec, vectors=vectors, layout=args.layout, dtype=args.dtype,
                                      convert=convert, vjp=vjp, name=args.target)
        return [forward, backward]

    return report_for_cli(args, run)


def _torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _has_backward(spec: str) -> None:
    mem = registry().get(spec)
    if mem is not None and getattr(mem, "backward", None) is None:
        _load_with_gradients(spec, None, None)  # raises NoGradientsError naming the specs that have one
