"""The conformance runner: check another implementation of a memory against refmem's test vectors.

NumPy-only module (I/O and comparison on the host): the implementation under
test may compute on anything; what it returns is brought to NumPy through
DLPack (``np.from_dlpack``), so PyTorch, JAX, CuPy or array_api_strict
tensors are accepted without refmem importing any of them.

Command line::

    refmem conform MODULE:FUNCTION --spec NAME [--vectors DIR] [--layout refmem|fla]
                   [--dtype float32|float64] [--convert MODULE:FUNCTION]

Python (inside another project's pytest)::

    from refmem.conform import assert_conforms
    assert_conforms(my_kernel, spec="delta_rule", layout="fla", dtype="float32")

Layouts
-------
``refmem`` (default)
    ``fn(q, k, v, **gates, initial_state=M0) -> (o, M_T)`` with refmem's
    conventions (MATH.md 0): ``q, k [..., T, d_k]``, ``v [..., T, d_v]``, gates
    ``[..., T]`` (or ``[..., T, d]``), state ``M [..., d_v, d_k]``, read-out
    ``o_t = M_t q_t`` after the update, no scale on ``q``.
``fla`` (flash-linear-attention)
    ``fn(q, k, v, **gates, initial_state=S0, output_final_state=True) -> (o, S_T)``
    with inputs ``[B, T, H, K]``, gates ``[B, T, H]`` (per channel
    ``[B, T, H, K]``), state ``S = M^T`` of shape ``[B, H, K, V]``. The forget
    gate ``alpha`` is passed in log space, ``g = log(alpha)`` (``gk`` when per
    channel), with ``alpha = 0`` sent as the log of the smallest normal number
    of the dtype so that no ``-inf`` enters a cumulative sum. ``beta`` is the
    step size after the sigmoid. fla applies its default scale ``1/sqrt(K)``
    to ``q`` itself, so the runner feeds ``q sqrt(K)``: a kernel that forgets
    the scale is caught. refmem's leading dims become ``(B, H)``: none ->
    ``(1, 1)``, one -> ``(B, 1)``, two -> ``(B, H)``, more -> all but the last
    folded into ``B``.

A case the layout cannot express (a state made of several arrays, under
``fla``) is reported as skipped, never as a pass.

Pass criterion, per case and output (``ref`` the float64 expected output):
``max|out - ref| <= tol * max|ref|`` and ``rms(out - ref) <= tol * rms(ref)``
(absolute when ``ref`` is all zero), with ``tol`` the case's tolerance for the
dtype compared (``refmem.vectors``: ``8 eps (T + d_k + d_v) max(1, kappa)``).
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .metrics import max_abs_error, rel_error
from .vectors import Case, VectorError, generate, load, positional_names, registry

LAYOUTS = ("refmem", "fla")
DTYPES = ("float64", "float32")


# ---------------------------------------------------------------- array interchange


def to_numpy(x) -> np.ndarray:
    """Any array-like or DLPack tensor (torch, jax, cupy, array_api_strict) as a NumPy array on the host."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError, ValueError):
            pass
        try:  # a device tensor: ask the producer for a host copy (DLPack 1.0)
            return np.from_dlpack(x, device="cpu", copy=True)
        except (BufferError, RuntimeError, TypeError, ValueError):
            pass
        for name in ("detach", "cpu"):  # duck-typed fallback for producers without DLPack 1.0 host copies
            if hasattr(x, name):
                x = getattr(x, name)()
        return np.from_dlpack(x)
    return np.asarray(x)


# ---------------------------------------------------------------- layouts


def _lead_to_bh(lead: tuple) -> tuple:
    """refmem's leading dims as fla's ``(B, H)``."""
    if len(lead) == 0:
        return (1, 1)
    if len(lead) == 1:
        return (lead[0], 1)
    return (int(np.prod(lead[:-1])), lead[-1])


def _seq_to_fla(x, lead):
    """``[..., T, d] -> [B, T, H, d]``."""
    B, H = _lead_to_bh(lead)
    return np.swapaxes(x.reshape((B, H) + x.shape[len(lead):]), 1, 2)  # (B, H, T, d) -> (B, T, H, d)


def _seq_from_fla(x, lead, shape):
    """``[B, T, H, d] -> [..., T, d]`` (``shape`` the refmem shape expected)."""
    return np.swapaxes(x, 1, 2).reshape(shape)  # (B, T, H, d) -> (B, H, T, d) -> (..., T, d)


def _gate_to_fla(g, lead):
    """Per-step gate ``[..., T] -> [B, T, H]``; per-channel ``[..., T, d] -> [B, T, H, d]``."""
    B, H = _lead_to_bh(lead)
    g = g.reshape((B, H) + g.shape[len(lead):])
    return np.swapaxes(g, 1, 2)


def _log_gate(alpha):
    """``g = log(alpha)``, with 0 mapped to the log of the dtype's smallest normal (finite, ``exp`` of it is ~0)."""
    floor = np.finfo(alpha.dtype).tiny
    return np.log(np.maximum(alpha, floor))


@dataclass
class _Call:
    args: tuple
    kwargs: dict
    unpack: Callable  # raw outputs (numpy) -> {name: refmem-layout array}


def _refmem_call(case: Case, cast) -> _Call:
    kw = {n: cast(a) for n, a in case.call_kwargs().items()}
    first = tuple(cast(case.inputs[n]) for n in positional_names(case.inputs))  # q, k, v (or x: the flat convention)
    return _Call(first, kw, lambda outs: outs)


def _fla_call(case: Case, cast, accepts: Callable[[str], bool]) -> _Call:
    if positional_names(case.inputs) != ("q", "k", "v"):
        raise _NotApplicable("the fla layout is for sequence memories (q, k, v); use layout 'refmem'")
    q, k, v = case.inputs["q"], case.inputs["k"], case.inputs["v"]
    lead = tuple(k.shape[:-2])
    K = k.shape[-1]
    kw = {}
    for n, a in case.call_kwargs().items():
        if n == "initial_state":
            if isinstance(a, tuple):
                raise _NotApplicable("the fla layout needs a single matrix state; this memory's initial state has several parts")
            B, H = _lead_to_bh(lead)
            kw["initial_state"] = cast(np.swapaxes(a.reshape((B, H) + a.shape[len(lead):]), -1, -2))  # M0^T: (B, H, K, V)
        elif n == "alpha":  # forget gate -> log space; per channel is fla's gk
            per_channel = a.ndim == k.ndim
            kw["gk" if per_channel else "g"] = cast(_log_gate(_gate_to_fla(a, lead).astype(cast.dtype)))
        elif isinstance(a, np.ndarray):
            kw[n] = cast(_gate_to_fla(a, lead))
        else:
            kw[n] = a
    if accepts("output_final_state"):
        kw["output_final_state"] = True
    # fla multiplies q by its default scale 1/sqrt(K); pre-multiplying by sqrt(K) makes its read-out q^T S_t = M_t q.
    args = (cast(_seq_to_fla(q * math.sqrt(K), lead)), cast(_seq_to_fla(k, lead)), cast(_seq_to_fla(v, lead)))

    def unpack(outs):
        res = {}
        for n, a in outs.items():
            want = case.outputs[n].shape if n in case.outputs else None
            if n == "o" and want is not None:
                B, H = _lead_to_bh(lead)
                fla_shape = (B, want[-2], H, want[-1])
                res[n] = (_seq_from_fla(a, lead, want) if a.shape == fla_shape else
                          _ShapeError(n, f"shape {a.shape}, but the fla layout expects [B, T, H, V] = {fla_shape}"))
            elif n == "state" and want is not None:
                B, H = _lead_to_bh(lead)
                fla_shape = (B, H, want[-1], want[-2])
                if a.shape != fla_shape:
                    hint = " (a state in refmem's [V, K] orientation instead of fla's S = M^T?)" if a.shape == (B, H) + want[-2:] else ""
                    res[n] = _ShapeError(n, f"shape {a.shape}, but the fla layout expects [B, H, K, V] = {fla_shape}{hint}")
                else:
                    res[n] = np.swapaxes(a, -1, -2).reshape(want)  # S^T = M
            else:
                res[n] = a
        return res

    return _Call(args, kw, unpack)


class _NotApplicable(Exception):
    """A case the layout cannot express (reported as skipped, never as a pass)."""


class _ShapeError(Exception):
    """An output whose shape does not fit the layout (kept as a value: a failing row for that output only)."""

    def __init__(self, output, detail):
        self.output, self.detail = output, detail
        super().__init__(detail)


# ---------------------------------------------------------------- comparison


@dataclass
class Row:
    """One (case, output) comparison."""

    case: str
    output: str
    max_abs: float
    rms_rel: float
    max_rel: float
    tolerance: float
    passed: bool
    message: str = ""


@dataclass
class ConformResult:
    """The result of :func:`check`: one :class:`Row` per case and output."""

    target: str
    spec: str
    layout: str
    dtype: str
    rows: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (case, reason): cases the layout cannot express

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows)

    def failing_outputs(self) -> list[str]:
        """Names of the outputs that differ in at least one case, in order of first appearance."""
        seen = []
        for r in self.rows:
            if not r.passed and r.output not in seen:
                seen.append(r.output)
        return seen

    def summary(self) -> str:
        """A verdict line per output, then the overall verdict."""
        lines = []
        outputs = []
        for r in self.rows:
            if r.output not in outputs:
                outputs.append(r.output)
        for o in outputs:
            rs = [r for r in self.rows if r.output == o]
            bad = [r for r in rs if not r.passed]
            if bad:
                first = bad[0]
                lines.append(f"output {o!r} DIFFERS in {len(bad)} of {len(rs)} cases "
                             f"(first: case {first.case}: {first.message or _numbers(first)})")
            else:
                lines.append(f"output {o!r} matches in all {len(rs)} cases")
        for case, reason in self.skipped:
            lines.append(f"case {case} skipped: {reason}")
        verdict = "PASS" if self.passed else f"FAIL: output(s) {', '.join(repr(o) for o in self.failing_outputs()) or '(none compared)'} differ"
        lines.append(f"{verdict} ({self.target}, spec {self.spec}, layout {self.layout}, {self.dtype})")
        return "\n".join(lines)

    def table(self) -> str:
        head = ("case", "output", "max-abs", "rms-rel", "max-rel", "tolerance", "status")
        body = [(r.case, r.output, f"{r.max_abs:.2e}", f"{r.rms_rel:.2e}", f"{r.max_rel:.2e}", f"{r.tolerance:.1e}",
                 "pass" if r.passed else "FAIL") for r in self.rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
        fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out = [fmt(head), fmt(tuple("-" * w for w in widths))] + [fmt(b) for b in body]
        out += [f"  ! {r.case} / {r.output}: {r.message}" for r in self.rows if r.message]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table() + "\n" + self.summary()


def _numbers(r: Row) -> str:
    return f"max-abs {r.max_abs:.2e}, rms-rel {r.rms_rel:.2e}, max-rel {r.max_rel:.2e} > tol {r.tolerance:.1e}"


def _rms(x, x_max: float) -> float:
    """Root mean square, scaled by ``max|x|`` first so that squaring cannot overflow."""
    if not x.size or x_max == 0:
        return 0.0
    return x_max * float(np.sqrt(np.mean((x / x_max) ** 2)))


def compare(out, ref: np.ndarray, tol: float, case: str, name: str) -> Row:
    """Compare one output with its float64 reference (module docstring: pass criterion)."""
    nan = math.nan
    if out.shape != ref.shape:
        return Row(case, name, nan, nan, nan, tol, False, f"shape {out.shape}, expected {ref.shape}")
    out = out.astype(np.float64)
    if not np.all(np.isfinite(out)):
        return Row(case, name, nan, nan, nan, tol, False, f"{int(np.sum(~np.isfinite(out)))} non-finite values")
    diff = out - ref
    max_abs = max_abs_error(out, ref, np)
    ref_max = max_abs_error(ref, 0 * ref, np)
    rms_d = _rms(diff, max_abs)
    rms_r = _rms(ref, ref_max)
    max_rel = rel_error(out, ref, np)
    rms_rel = rms_d / rms_r if rms_r > 0 else rms_d
    ok = max_rel <= tol and rms_rel <= tol
    return Row(case, name, max_abs, rms_rel, max_rel, tol, ok, "" if ok else _numbers(Row(case, name, max_abs, rms_rel, max_rel, tol, ok)))


def _accepts(fn) -> Callable[[str], bool]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return lambda name: False
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return lambda name: var_kw or name in params


def _name_outputs(raw, expected: list[str]) -> dict:
    """Raw returns (array or tuple) named like the expected outputs (``o`` first, then the state(s))."""
    if not isinstance(raw, (tuple, list)):
        raw = (raw,)
    flat = [raw[0]]
    rest = list(raw[1:])
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)) and len(expected) > 2:
        rest = list(rest[0])
    flat += [r for r in rest if r is not None]
    return {n: to_numpy(a) for n, a in zip(expected, flat)}


class _Cast:
    """Cast a NumPy input to the compared dtype, then hand it to the implementation via ``convert``."""

    def __init__(self, dtype, convert):
        self.dtype = np.dtype(dtype)
        self.convert = convert

    def __call__(self, a):
        if isinstance(a, tuple):  # a state made of several arrays
            return tuple(self(x) for x in a)
        if not isinstance(a, np.ndarray):
            return a
        a = np.ascontiguousarray(a.astype(self.dtype))
        if self.convert is None:
            return a
        try:
            return self.convert(a)
        except (Exception, SystemExit) as exc:  # the converter's failure, not the implementation's
            raise ConvertError(f"raised {type(exc).__name__}: {exc} (on a {a.dtype} array of shape {a.shape})") from None


class ConvertError(ValueError):
    """The ``convert`` function failed on an input (a usage error: the implementation was not called)."""

    def __init__(self, detail: str):
        self.detail = detail
        super().__init__(f"convert {detail}")


def _names(value, argument: str):
    """``None``, one name, or an iterable of names, as a tuple of str (``TypeError`` naming ``argument``)."""
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise TypeError(f"{argument} must be a name or an iterable of names; got {type(value).__name__}") from None
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"{argument} must hold names (str); got {bad[0]!r} of type {type(bad[0]).__name__}")
    return names


def _check_arguments(fn, spec, vectors, layout, dtype, convert, name) -> None:
    """Bad input to :func:`check` is a ``TypeError`` / ``ValueError`` naming the argument."""
    if not callable(fn):
        raise TypeError(f"fn must be callable (the implementation under test); got {type(fn).__name__}")
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a registered memory name (str); got {type(spec).__name__}")
    known = registry()
    if spec not in known:
        raise ValueError(f"spec {spec!r} is not a registered memory; known: {', '.join(sorted(known))}")
    if vectors is not None and not isinstance(vectors, (str, os.PathLike)):
        raise TypeError(f"vectors must be a directory path (str or os.PathLike) or None; got {type(vectors).__name__}")
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}; got {dtype!r}")
    if convert is not None and not callable(convert):
        raise TypeError(f"convert must be callable or None; got {type(convert).__name__}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None; got {type(name).__name__}")


def kernel_gates() -> dict:
    """``{spec: (gates in the refmem layout, gates in the fla layout)}`` for every memory with test vectors.

    The fla layout sends the forget gate ``alpha`` as ``g = log(alpha)``, or
    ``gk`` when it is per key channel (``[..., T, d_k]``); other gates keep their names.
    """
    from .memories import MEMORIES

    table = {}
    for spec_name, mem in sorted(MEMORIES.items()):
        if mem.make_inputs is None:
            continue
        raw = mem.make_inputs(0, (1,), 2, 3, 2, np, "float64")  # tiny: only the names and ranks matter
        ours = [n for n, a in raw.items() if n not in ("q", "k", "v") and hasattr(a, "shape")]
        fla = [("gk" if raw[n].ndim == raw["k"].ndim else "g") if n == "alpha" else n for n in ours]
        table[spec_name] = (ours, fla)
    return table


def check(fn: Callable, *, spec: str, vectors: str | None = None, layout: str = "refmem", dtype: str = "float64",
          convert: Callable | None = None, cases=None, outputs=None, name: str | None = None) -> ConformResult:
    """Run implementation ``fn`` on the test vectors of ``spec`` and compare with refmem.

    Parameters
    ----------
    fn : callable
        The implementation under test, called as described for ``layout`` (module docstring).
    spec : str
        Registered memory name (``specs/<spec>.md``).
    vectors : str, optional
        A directory written by ``refmem vectors generate``; generated in a
        temporary directory when omitted.
    layout : {"refmem", "fla"}
    dtype : {"float64", "float32"}
        The dtype the inputs are given in; outputs are compared with the float64
        reference under that dtype's tolerance.
    convert : callable, optional
        Applied to every NumPy input array before the call (e.g. ``torch.from_numpy``
        or ``lambda a: torch.as_tensor(a, device="cuda")``).
    cases : str or iterable of str, optional
        Only these case names.
    outputs : str or iterable of str, optional
        Only compare these outputs (e.g. ``"o"`` for a kernel that returns no state).
    name : str, optional
        How the result names the implementation (default ``module:qualname``).

    Returns
    -------
    ConformResult

    Raises
    ------
    TypeError, ValueError
        Bad arguments, named (``fn``, ``spec``, ``vectors``, ``layout``, ``dtype``,
        ``convert``, ``cases``, ``outputs``, ``name``); :class:`ConvertError` (a
        ``ValueError``) when ``convert`` fails on an input.
    VectorError
        The vectors fail an integrity check (:mod:`refmem.vectors`).

    Examples
    --------
    A linear-attention kernel written in refmem's layout, checked on two of the
    test-vector cases:

    >>> import numpy as np
    >>> from refmem.conform import check
    >>> def my_linear_attention(q, k, v, *, initial_state=None):
    ...     M = np.zeros(k.shape[:-2] + (v.shape[-1], k.shape[-1]))  # [..., d_v, d_k]
    ...     outs = []
    ...     for t in range(k.shape[-2]):
    ...         M = M + v[..., t, :, None] * k[..., t, None, :]      # write v_t k_t^T
    ...         outs.append(np.einsum("...ij,...j->...i", M, q[..., t, :]))  # then read M_t q_t
    ...     return np.stack(outs, axis=-2), M
    >>> result = check(my_linear_attention, spec="linear_attention", cases=["T1", "no_batch"])
    >>> result.passed
    True
    """
    _check_arguments(fn, spec, vectors, layout, dtype, convert, name)
    cases, outputs = _names(cases, "cases"), _names(outputs, "outputs")
    target = name or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
    if vectors is None:
        with tempfile.TemporaryDirectory(prefix="refmem-vectors-") as tmp:
            generate(tmp, [spec])
            loaded = load(tmp, spec)
    else:
        loaded = load(vectors, spec)
    if cases is not None:
        known = [c.name for c in loaded]
        unknown = [c for c in cases if c not in known]
        if unknown:
            raise ValueError(f"cases {unknown} are not among the vectors of {spec!r}: {', '.join(known)}")
        loaded = [c for c in loaded if c.name in set(cases)]
    if outputs is not None:
        known = sorted({n for c in loaded for n in c.outputs})
        unknown = [n for n in outputs if n not in known]
        if unknown or not outputs:
            raise ValueError(f"outputs {list(outputs)} must name outputs of {spec!r}: {', '.join(known)}")
    result = ConformResult(target, spec, layout, dtype)
    cast = _Cast(dtype, convert)
    accepts = _accepts(fn)
    for case in loaded:
        tol = case.tolerance[dtype]
        expected = [n for n in case.outputs if outputs is None or n in outputs]
        order = list(case.outputs)  # 'o' first, then the state(s), as generated
        try:
            call = _refmem_call(case, cast) if layout == "refmem" else _fla_call(case, cast, accepts)
            got = call.unpack(_name_outputs(fn(*call.args, **call.kwargs), order))
        except _NotApplicable as exc:
            result.skipped.append((case.name, str(exc)))
            continue
        except (VectorError, ConvertError):
            raise
        except (Exception, SystemExit) as exc:  # the implementation crashed (or exited) on this case: a failing row
            result.rows.append(Row(case.name, "(call)", math.nan, math.nan, math.nan, tol, False,
                                   f"raised {type(exc).__name__}: {exc}"))
            continue
        for n in expected:
            if n not in got:
                result.rows.append(Row(case.name, n, math.nan, math.nan, math.nan, tol, False,
                                       "not returned (pass outputs=('o',) to compare only the read-out)"))
            elif isinstance(got[n], _ShapeError):  # one misshapen output does not hide the others
                result.rows.append(Row(case.name, n, math.nan, math.nan, math.nan, tol, False, got[n].detail))
            else:
                result.rows.append(compare(got[n], case.outputs[n], tol, case.name, n))
    return result


def assert_conforms(fn: Callable, **kwargs) -> ConformResult:
    """:func:`check`, raising ``AssertionError`` with the table and verdict when any output differs."""
    res = check(fn, **kwargs)
    if not res.passed:
        raise AssertionError(str(res))
    return res


# ---------------------------------------------------------------- command line


class TargetError(Exception):
    """A ``MODULE:FUNCTION`` that cannot be loaded (the message says which part failed, and why)."""


def resolve(target: str, what: str = "target"):
    """``"module:function"`` (or ``module:Class.method``) to the object; the current directory is importable.

    Raises :class:`TargetError` naming ``what`` when the text is malformed, the
    module cannot be imported (missing, a syntax error, an exception or
    ``sys.exit`` while importing), or the attribute is missing.
    """
    mod, sep, attr = target.partition(":")
    if not sep or not mod or not attr:
        raise TargetError(f"{what} {target!r}: expected MODULE:FUNCTION")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(mod)
    except SyntaxError as exc:
        raise TargetError(f"{what} {target!r}: module {mod!r} has a syntax error ({exc.filename}, line {exc.lineno}: "
                          f"{exc.msg})") from None
    except ModuleNotFoundError as exc:
        raise TargetError(f"{what} {target!r}: cannot import module {mod!r} ({exc})") from None
    except SystemExit as exc:
        raise TargetError(f"{what} {target!r}: importing module {mod!r} called sys.exit({exc.code!r})") from None
    except Exception as exc:  # the module's own code failed while importing
        raise TargetError(f"{what} {target!r}: importing module {mod!r} raised {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetError(f"{what} {target!r}: module {mod!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise TargetError(f"{what} {target!r}: {attr!r} is a {type(obj).__name__}, not callable")
    return obj


def main(args) -> int:
    try:
        fn = resolve(args.target, "MODULE:FUNCTION")
        convert = resolve(args.convert, "--convert") if args.convert else None
        res = check(fn, spec=args.spec, vectors=args.vectors, layout=args.layout, dtype=args.dtype,
                    convert=convert, outputs=args.outputs, name=args.target)
    except ConvertError as exc:
        print(f"refmem conform: error: --convert {args.convert!r} {exc}", file=sys.stderr)
        return 2
    except (TargetError, VectorError, ValueError, TypeError) as exc:
        print(f"refmem conform: error: {exc}", file=sys.stderr)
        return 2
    print(res)
    return 0 if res.passed else 1
