"""The conformance runner: check another implementation of a memory against refmem's test vectors.

NumPy-only module (I/O and comparison on the host): the implementation under
test may compute on anything; what it returns is brought to NumPy through
DLPack (``np.from_dlpack``), so PyTorch, JAX, CuPy or array_api_strict
tensors are accepted without refmem importing any of them.

Command line::

    refmem conform MODULE:FUNCTION --spec NAME [--vectors DIR] [--layout refmem|fla]
                   [--dtype float32|float64] [--convert MODULE:FUNCTION] [layout options]

Python (inside another project's pytest)::

    from refmem.conform import assert_conforms
    assert_conforms(my_kernel, spec="delta_rule", layout="fla", dtype="float32")

Layouts (:mod:`refmem.kernel_layouts`, ``specs/kernel_layouts.md``)
--------------------------------------------------------------------
``refmem`` (default)
    ``fn(q, k, v, **gates, initial_state=M0) -> (o, M_T)`` with refmem's
    conventions (MATH.md 0): ``q, k [..., T, d_k]``, ``v [..., T, d_v]``, gates
    ``[..., T]`` (or ``[..., T, d]``), state ``M [..., d_v, d_k]``, read-out
    ``o_t = M_t q_t`` after the update, no scale on ``q``.
``fla`` (flash-linear-attention)
    ``fn(q, k, v, **gates, initial_state=S0, output_final_state=True) -> (o, S_T)``
    with inputs ``[B, T, H, K]``, gates ``[B, T, H]`` (per channel
    ``[B, T, H, K]``), state ``S = M^T`` of shape ``[B, H, K, V]``. Gates are
    mapped by meaning: the fraction of the state kept per step arrives as
    ``g = log(kept)`` (``gk`` when per channel; Titans' forgetting rate
    ``alpha`` as ``g = log(1 - alpha)``); other gates keep their names
    (``beta``, the step size after the sigmoid). fla applies its default
    scale ``1/sqrt(K)`` to ``q`` itself, so the runner feeds ``q sqrt(K)``: a
    kernel that forgets the scale is caught.

Options, orthogonal, each a keyword of :func:`check` and a flag of the command:
``state_v_first`` (``[V, K]`` or ``[K, V]`` states), ``gate_space`` (fla
gates in log or linear space), ``value_heads_per_qk`` (grouped value heads),
``cu_seqlens`` (packed variable-length batches), ``use_qk_l2norm_in_kernel``
(the kernel normalises ``q, k``) and ``scale`` (the read-out scale).

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

from .kernel_layouts import (LAYOUTS, Layout, NotApplicable, OutputShapeError, build_call, fla_gate_name, lead_to_bh,
                             log_gate)
from .metrics import max_abs_error, rel_error
from .vectors import Case, VectorError, generate, load, registry

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


# ---------------------------------------------------------------- layouts (refmem.kernel_layouts)

_lead_to_bh = lead_to_bh
_log_gate = log_gate
_DEFAULT_OPTIONS = dict(state_v_first=None, gate_space=None, value_heads_per_qk=1, cu_seqlens=False,
                        use_qk_l2norm_in_kernel=False, scale=None)


def layout_from(layout, options: dict) -> Layout:
    """The :class:`~refmem.kernel_layouts.Layout` of a ``layout`` name and its options (or a Layout, options unset)."""
    if isinstance(layout, Layout):
        if options != _DEFAULT_OPTIONS:
            raise ValueError("layout is a Layout that carries its options: pass the options there, not to check()")
        return layout
    return Layout(layout, **options)  # validates every option (TypeError / ValueError naming it)


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
    noun: str = "output"  # what a row compares: "output", or "gradient" (refmem.conform_backward)
    stage_order: tuple = ()  # a staged check: the stage names in the order a chunked kernel computes them

    def first_differing_stage(self) -> str | None:
        """A staged check: the first stage, in the order of the computation, that differs in some case."""
        bad = set(self.failing_outputs())
        return next((n for n in self.stage_order if n in bad), None)

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
                lines.append(f"{self.noun} {o!r} DIFFERS in {len(bad)} of {len(rs)} cases "
                             f"(first: case {first.case}: {first.message or _numbers(first)})")
            else:
                lines.append(f"{self.noun} {o!r} matches in all {len(rs)} cases")
        for case, reason in self.skipped:
            lines.append(f"case {case} skipped: {reason}")
        first = self.first_differing_stage()
        if first is not None:
            lines.append(f"first stage that differs, in the order of the computation ({', '.join(self.stage_order)}): "
                         f"{first!r}")
        verdict = "PASS" if self.passed else f"FAIL: {self.noun}(s) {', '.join(repr(o) for o in self.failing_outputs()) or '(none compared)'} differ"
        lines.append(f"{verdict} ({self.target}, spec {self.spec}, layout {self.layout}, {self.dtype})")
        return "\n".join(lines)

    def table(self) -> str:
        head = ("case", self.noun, "max-abs", "rms-rel", "max-rel", "tolerance", "status")
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

    def offsets(self, a):
        """An integer array (``cu_seqlens``) handed over as it is: int64, not cast to the compared dtype."""
        return self._convert(np.ascontiguousarray(a))

    def _convert(self, a):
        if self.convert is None:
            return a
        try:
            return self.convert(a)
        except (Exception, SystemExit) as exc:  # the converter's failure, not the implementation's
            raise ConvertError(f"raised {type(exc).__name__}: {exc} (on a {a.dtype} array of shape {a.shape})") from None

    def __call__(self, a):
        if isinstance(a, tuple):  # a state made of several arrays
            return tuple(self(x) for x in a)
        if not isinstance(a, np.ndarray):
            return a
        return self._convert(np.ascontiguousarray(a.astype(self.dtype)))


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
    if not isinstance(layout, (str, Layout)) or (isinstance(layout, str) and layout not in LAYOUTS):
        raise ValueError(f"layout must be one of {LAYOUTS} (or a refmem.kernel_layouts.Layout); got {layout!r}")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}; got {dtype!r}")
    if convert is not None and not callable(convert):
        raise TypeError(f"convert must be callable or None; got {type(convert).__name__}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None; got {type(name).__name__}")


def kernel_gates() -> dict:
    """``{spec: (gates in the refmem layout, gates in the fla layout)}`` for every memory with test vectors.

    The fla layout maps every gate by its meaning (:data:`refmem.kernel_layouts.GATE_MEANINGS`):
    the fraction of the state kept per step (the forget gate) arrives as
    ``g = log(kept)``, or ``gk`` when it is per key channel (``[..., T, d_k]``);
    other gates keep their names.
    """
    from .memories import MEMORIES

    table = {}
    for spec_name, mem in sorted(MEMORIES.items()):
        if mem.make_inputs is None:
            continue
        raw = mem.make_inputs(0, (1,), 2, 3, 2, np, "float64")  # tiny: only the names and ranks matter
        ours = [n for n, a in raw.items() if n not in ("q", "k", "v") and hasattr(a, "shape")]
        fla = [fla_gate_name(spec_name, n, raw[n].ndim == raw["k"].ndim) for n in ours]
        table[spec_name] = (ours, fla)
    return table


def check(fn: Callable, *, spec: str, vectors: str | None = None, layout: str = "refmem", dtype: str = "float64",
          convert: Callable | None = None, cases=None, outputs=None, name: str | None = None,
          state_v_first: bool | None = None, gate_space: str | None = None, value_heads_per_qk: int = 1,
          cu_seqlens: bool = False, use_qk_l2norm_in_kernel: bool = False, scale: float | None = None,
          stages: bool = False, chunk_size: int = 64) -> ConformResult:
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
    layout : {"refmem", "fla"} or Layout
        The calling convention (:mod:`refmem.kernel_layouts`); a
        :class:`~refmem.kernel_layouts.Layout` carries its options itself.
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
    state_v_first, gate_space, value_heads_per_qk, cu_seqlens, use_qk_l2norm_in_kernel, scale
        Layout options (:mod:`refmem.kernel_layouts`; ``specs/kernel_layouts.md``):
        states ``[V, K]`` or ``[K, V]``; fla forget gates in ``"log"`` or
        ``"linear"`` space; ``G`` value heads per ``q, k`` head; packed
        variable-length batches; a kernel that l2-normalises ``q, k`` itself;
        the read-out scale passed as ``scale=``. A case an option cannot
        express is reported as skipped with the reason.
    stages : bool
        Check the kernel's stage outputs (:mod:`refmem.stage_conformance`): the
        kernel is also passed ``chunk_size`` and returns a dict of named stage
        arrays (per-chunk start states, decays, ``A``, ``A_inv``, ``W``, ``U~``,
        ``U``; fla names ``h, g_cumsum, A, Ai, w, u, v_new``), each compared with
        :mod:`refmem.chunked.stages`: a mismatch is named by its stage.
    chunk_size : int
        The chunk size of a staged check (default 64).

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
    lay = layout_from(layout, dict(state_v_first=state_v_first, gate_space=gate_space,
                                   value_heads_per_qk=value_heads_per_qk, cu_seqlens=cu_seqlens,
                                   use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, scale=scale))
    if not isinstance(stages, bool):
        raise TypeError(f"stages must be True or False; got {stages!r}")
    if stages:
        from .stage_conformance import staged_specs

        if spec not in staged_specs():
            raise ValueError(f"stages: refmem has stage oracles for {', '.join(staged_specs())}; not for {spec!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1; got {chunk_size!r}")
        if lay.cu_seqlens:
            raise ValueError("stages cannot be combined with cu_seqlens (a packed batch's chunks follow its sequences)")
    cases, outputs = _names(cases, "cases"), _names(outputs, "outputs")
    target = name or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
    loaded = select_cases(load_or_generate(vectors, spec), spec, cases)
    if outputs is not None:
        known = sorted({n for c in loaded for n in c.outputs})
        unknown = [n for n in outputs if n not in known]
        if unknown or not outputs:
            raise ValueError(f"outputs {list(outputs)} must name outputs of {spec!r}: {', '.join(known)}")
    result = ConformResult(target, spec, lay.describe(), dtype)
    if stages:
        from .stage_conformance import computation_order

        result.stage_order = computation_order(lay)
    cast = _Cast(dtype, convert)
    accepts = _accepts(fn)
    for case in loaded:
        tol = case.tolerance[dtype]
        expected = [n for n in case.outputs if outputs is None or n in outputs]
        order = list(case.outputs)  # 'o' first, then the state(s), as generated
        try:
            call = build_call(case, lay, cast, accepts)
            if stages:
                staged = _staged_call(fn, call, case, lay, chunk_size, order, tol)
                result.rows.extend(staged.pop("(rows)"))
                got = staged
            else:
                got = call.merge([inv.unpack(_name_outputs(fn(*inv.args, **inv.kwargs), order))
                                  for inv in call.invocations])
        except NotApplicable as exc:
            result.skipped.append((case.name, str(exc)))
            continue
        except (VectorError, ConvertError):
            raise
        except (Exception, SystemExit) as exc:  # the implementation crashed (or exited) on this case: a failing row
            result.rows.append(Row(case.name, "(call)", math.nan, math.nan, math.nan, tol, False,
                                   f"raised {type(exc).__name__}: {exc}"))
            continue
        for n in expected:
            if stages and n not in got:  # a staged kernel returns o and the state only if it wants them compared
                continue
            if n not in got:
                result.rows.append(Row(case.name, n, math.nan, math.nan, math.nan, tol, False,
                                       "not returned (pass outputs=('o',) to compare only the read-out)"))
            elif isinstance(got[n], OutputShapeError):  # one misshapen output does not hide the others
                result.rows.append(Row(case.name, n, math.nan, math.nan, math.nan, tol, False, got[n].detail))
            else:
                result.rows.append(compare(got[n], call.expected[n], tol, case.name, n))
    return result


def _staged_call(fn, call, case, lay, chunk_size, order, tol) -> dict:
    """Call a staged kernel once (``chunk_size=`` added); its outputs by name, and its stage rows under ``"(rows)"``."""
    from .stage_conformance import stage_rows

    if len(call.invocations) != 1:
        raise NotApplicable("a packed variable-length case has no stage oracle (its chunks follow the sequences)")
    inv = call.invocations[0]
    raw = fn(*inv.args, **inv.kwargs, chunk_size=chunk_size)
    if not isinstance(raw, dict):
        raise TypeError(f"with stages the kernel must return a dict of named stage arrays; it returned "
                        f"{type(raw).__name__}")
    returned = {n: to_numpy(a) for n, a in raw.items()}
    outs = call.merge([inv.unpack({n: a for n, a in returned.items() if n in order})])
    outs["(rows)"] = stage_rows(case, lay, chunk_size, {n: a for n, a in returned.items() if n not in order}, tol,
                                compare, Row)
    return outs


def load_or_generate(vectors, spec: str) -> list[Case]:
    """The cases of ``spec`` from the vector folder ``vectors``, or freshly generated when it is ``None``."""
    if vectors is not None:
        return load(vectors, spec)
    with tempfile.TemporaryDirectory(prefix="refmem-vectors-") as tmp:
        generate(tmp, [spec])
        return load(tmp, spec)


def select_cases(loaded: list[Case], spec: str, cases) -> list[Case]:
    """The cases named in ``cases`` (all when ``None``); ``ValueError`` for a name that is not there."""
    if cases is None:
        return loaded
    known = [c.name for c in loaded]
    unknown = [c for c in cases if c not in known]
    if unknown:
        raise ValueError(f"cases {unknown} are not among the vectors of {spec!r}: {', '.join(known)}")
    return [c for c in loaded if c.name in set(cases)]


def passed_or_raise(res: ConformResult) -> ConformResult:
    """``res`` itself when it passed; else ``AssertionError`` carrying its table and verdict."""
    if not res.passed:
        raise AssertionError(str(res))
    return res


def assert_conforms(fn: Callable, **kwargs) -> ConformResult:
    """:func:`check`, raising ``AssertionError`` with the table and verdict when any output differs."""
    return passed_or_raise(check(fn, **kwargs))


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


def report_for_cli(args, run: Callable[[], list]) -> int:
    """Print the results ``run()`` returns; exit 0 all passed, 1 some differ, 2 on a usage error (one line)."""
    try:
        results = run()
    except ConvertError as exc:
        print(f"refmem conform: error: --convert {args.convert!r} {exc}", file=sys.stderr)
        return 2
    except (TargetError, VectorError, ValueError, TypeError) as exc:
        print(f"refmem conform: error: {exc}", file=sys.stderr)
        return 2
    print("\n\n".join(str(res) for res in results))
    return 0 if all(res.passed for res in results) else 1


def main(args) -> int:
    def run():
        fn = resolve(args.target, "MODULE:FUNCTION")
        convert = resolve(args.convert, "--convert") if args.convert else None
        return [check(fn, spec=args.spec, vectors=args.vectors, layout=args.layout, dtype=args.dtype,
                      convert=convert, outputs=args.outputs, name=args.target, state_v_first=args.state_v_first,
                      gate_space=args.gate_space, value_heads_per_qk=args.value_heads_per_qk,
                      cu_seqlens=args.cu_seqlens, use_qk_l2norm_in_kernel=args.use_qk_l2norm_in_kernel,
                      scale=args.scale, stages=args.stages, chunk_size=args.chunk_size)]

    return report_for_cli(args, run)
