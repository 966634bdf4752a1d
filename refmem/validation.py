"""Input checks shared by every level: shapes, dtypes, ranges, finiteness.

Every error names the argument and says what was expected. Shape and dtype
errors are ``ValueError`` / ``TypeError``; a non-finite input is a
``ValueError``. Finiteness needs one device-to-host read per call; it can be
switched off with ``refmem.options(check_finite=False)`` (a GPU user who has
already validated the data may want that), never silently.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from numbers import Real

from .backends import namespace_of

_OPTIONS = {"check_finite": True, "workers": None}  # workers: refmem.parallel (None = by size)


@contextlib.contextmanager
def options(**kwargs):
    """Temporarily change refmem's options, e.g. ``with refmem.options(check_finite=False):``."""
    unknown = set(kwargs) - set(_OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    saved = dict(_OPTIONS)
    _OPTIONS.update(kwargs)
    try:
        yield
    finally:
        _OPTIONS.update(saved)


def get_option(name: str):
    return _OPTIONS[name]


def dtype_name(dtype) -> str:
    """``float64`` for NumPy's, strict's or CuPy's float64 alike."""
    return str(dtype).rsplit(".", 1)[-1].replace("'>", "").replace("<class '", "")


# float16 is refused: every tolerance refmem derives (solvers, chunked == recurrent, conform) is
# stated for float32 and float64, and half precision overflows above 65504, so an oracle answer in
# float16 could not be certified. Big-endian float32/float64 (NumPy ">f8") are the same numbers.
SUPPORTED_DTYPES = ("float32", "float64")


def native_dtype(dtype):
    """``dtype`` in the machine's byte order (NumPy's ``>f8`` -> ``float64``); other dtypes unchanged."""
    to_native = getattr(dtype, "newbyteorder", None)
    return to_native("=") if to_native is not None else dtype


def same_dtype(a, b) -> bool:
    """Whether two dtypes hold the same numbers (byte order aside)."""
    return native_dtype(a) == native_dtype(b)


def native_byte_order(x):
    """``x`` itself, or a copy in the machine's byte order when it is a big-endian NumPy array."""
    dtype = getattr(x, "dtype", None)
    if dtype is not None and getattr(dtype, "isnative", True) is False:
        return x.astype(native_dtype(dtype))
    return x


def _is_supported_float(dtype, xp) -> bool:
    d = native_dtype(dtype)
    return any(d == getattr(xp, name, None) for name in SUPPORTED_DTYPES)


def check_real_floating(x, name: str, xp):
    if not _is_supported_float(x.dtype, xp):
        why = (" (half precision is not supported: refmem's tolerances are derived for float32 and float64)"
               if dtype_name(native_dtype(x.dtype)) in ("float16", "bfloat16") else "")
        raise TypeError(f"{name} must have a real floating dtype, float32 or float64; got {dtype_name(x.dtype)}{why}")


def float_dtype(dtype, xp, name: str = "dtype"):
    """A requested dtype, ``"float32"`` / ``"float64"`` or the namespace's own, as ``xp``'s dtype object."""
    if isinstance(dtype, str):
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name} must be 'float32' or 'float64'; got {dtype!r}")
        return getattr(xp, dtype)
    if not _is_supported_float(dtype, xp):
        raise TypeError(f"{name} must be 'float32', 'float64' or the array library's float32 / float64; got {dtype!r}")
    return native_dtype(dtype)


def count(n, name: str, *, low: int = 1) -> int:
    """A count (Python or NumPy integer, not bool) ``>= low``, as a Python int."""
    from numbers import Integral

    if isinstance(n, bool) or not isinstance(n, Integral):
        raise TypeError(f"{name} must be an integer >= {low}; got {type(n).__name__} {n!r}")
    if n < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {n}")
    return int(n)


def check_finite(x, name: str, xp) -> None:
    if _OPTIONS["check_finite"] and not bool(xp.all(xp.isfinite(x))):
        raise ValueError(f"{name} contains non-finite values (nan or inf); every entry must be finite")


def _describe(value) -> str:
    return "None" if value is None else type(value).__name__


def check_array(x, name: str) -> None:
    """``TypeError`` unless ``x`` is an array (not None, a number, a list or a tuple)."""
    if x is None or isinstance(x, (Real, complex, list, tuple, str)) or not hasattr(x, "shape") \
            or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array; got {_describe(x)}")


def check_arrays(**named):
    """Check that the named arrays share one namespace and one dtype (float32 or float64); return ``xp``.

    ``None`` values are skipped (optional inputs); a caller whose input is
    required checks it with :func:`check_array` or :func:`require` first.
    """
    present = {k: v for k, v in named.items() if v is not None}
    if not present and named:  # nothing to take a namespace from: the first input was needed
        check_array(None, next(iter(named)))
    for k, v in present.items():
        check_array(v, k)
    try:
        xp = namespace_of(*present.values())
    except TypeError as exc:
        raise TypeError(f"{', '.join(present)}: {exc}") from None
    dtype = None
    first = None
    for k, v in present.items():
        check_real_floating(v, k, xp)
        if dtype is None:
            dtype, first = v.dtype, k
        elif not same_dtype(v.dtype, dtype):
            raise TypeError(f"{k} has dtype {dtype_name(v.dtype)} but {first} has {dtype_name(dtype)}; "
                            "all inputs must share one dtype")
    for k, v in present.items():
        check_finite(v, k, xp)
    return xp


def require(**named) -> None:
    """``TypeError`` naming the first required input that is ``None`` or not an array."""
    for k, v in named.items():
        check_array(v, k)


def check_nonempty(x, name: str) -> None:
    """``ValueError`` when ``x`` has an axis of length 0 (nothing to compute with)."""
    if 0 in tuple(x.shape):
        raise ValueError(f"{name} has an empty axis (shape {tuple(x.shape)}); every axis must have length >= 1")


def check_batch_shape(p, name: str, batch: tuple, what: str = "the batch dims") -> None:
    """A per-batch parameter: a scalar, or an array whose shape broadcasts to ``batch``."""
    shape = tuple(getattr(p, "shape", ()))
    if len(shape) > len(batch) or any(s not in (1, b) for s, b in zip(shape[::-1], batch[::-1])):
        raise ValueError(f"{name} must be a number or an array broadcastable to {what} {batch}; "
                         f"got shape {shape}")


def check_ndim(x, name: str, ndim_min: int, what: str) -> None:
    if x.ndim < ndim_min:
        raise ValueError(f"{name} must have shape {what} (at least {ndim_min} dims); got shape {tuple(x.shape)}")


def check_last_dim(x, name: str, size: int, other: str) -> None:
    if x.shape[-1] != size:
        raise ValueError(f"{name} has last dimension {x.shape[-1]} but {other} needs {size}; got shape {tuple(x.shape)}")


def as_param(p, name: str, xp, dtype, *, low=None, high=None, low_open=False, high_open=False):
    """A scalar or array parameter (step size, gate) checked for range and finiteness.

    Returns an array of ``dtype`` in namespace ``xp``: a Python number becomes a
    0-d array, an array keeps its shape (broadcast against the batch dims).
    """
    if isinstance(p, bool) or (getattr(p, "dtype", None) is not None and getattr(p, "shape", None) == ()
                               and dtype_name(p.dtype) == "bool"):
        raise TypeError(f"{name} must be a real number or array, not bool")
    if isinstance(p, Real):
        v = float(p)
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite; got {v}")
        _check_range_scalar(v, name, low, high, low_open, high_open)
        return xp.asarray(v, dtype=dtype)
    if not hasattr(p, "shape"):
        raise TypeError(f"{name} must be a real number or an array; got {_describe(p)}")
    pxp = namespace_of(p)
    if pxp is not xp and getattr(pxp, "__name__", None) != getattr(xp, "__name__", None):
        raise TypeError(f"{name} is an array of another library than the other inputs")
    check_real_floating(p, name, xp)
    if not same_dtype(p.dtype, dtype):
        raise TypeError(f"{name} has dtype {dtype_name(p.dtype)} but the state has {dtype_name(dtype)}; "
                        "all inputs must share one dtype")
    check_finite(p, name, xp)
    if _OPTIONS["check_finite"]:  # range checks read the device like finiteness does
        lo_bad = hi_bad = False
        if low is not None:
            lo_bad = bool(xp.any(p <= low)) if low_open else bool(xp.any(p < low))
        if high is not None:
            hi_bad = bool(xp.any(p >= high)) if high_open else bool(xp.any(p > high))
        if lo_bad or hi_bad:
            raise ValueError(f"{name} must lie in {_interval(low, high, low_open, high_open)}; some entries do not")
    return p


def _interval(low, high, low_open, high_open) -> str:
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    return f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"


def _check_range_scalar(v, name, low, high, low_open, high_open):
    bad = (low is not None and (v <= low if low_open else v < low)) or (
        high is not None and (v >= high if high_open else v > high)
    )
    if bad:
        raise ValueError(f"{name} must lie in {_interval(low, high, low_open, high_open)}; got {v}")


def positive(p, name, xp, dtype):
    """A step size: finite and > 0."""
    return as_param(p, name, xp, dtype, low=0.0, low_open=True)


def unit_interval(p, name, xp, dtype):
    """A gate: finite and in [0, 1]."""
    return as_param(p, name, xp, dtype, low=0.0, high=1.0)


def expand_matrix(p, xp):
    """A batch-shaped parameter ``[...]`` broadcast against states ``[..., d_v, d_k]``."""
    return p if p.ndim == 0 else p[..., None, None]


def expand_vector(p, xp):
    """A batch-shaped parameter ``[...]`` broadcast against vectors ``[..., d]``."""
    return p if p.ndim == 0 else p[..., None]


class DivergenceError(FloatingPointError):
    """A scan produced non-finite values: the recurrence diverged or overflowed for these inputs.

    ``step`` is the first step ``t`` (0-based) whose read-out or state is not
    finite, when the scan knows it.
    """

    def __init__(self, message: str = "", *, step: int | None = None):
        super().__init__(message)
        self.step = step


def check_scan_state(M, t: int, xp) -> None:
    """Inside a scan: raise :class:`DivergenceError` at step ``t`` when the new state ``M`` is not finite.

    Without it the next step would refuse the state as bad input under an
    internal name; the scan's decorator (:func:`finite_outputs`) adds the
    inputs of that step to the message. One device read per step, switched off
    with the other checks.
    """
    if not _OPTIONS["check_finite"]:
        return
    parts = M if isinstance(M, (tuple, list)) else (M,)
    if not all(bool(xp.all(xp.isfinite(W))) for W in parts):
        raise DivergenceError(f"the state (or its gradient) is not finite at step t = {t}", step=t)


_OUTPUT_NAMES = ("read-out o", "final state", "third output")


def _first_non_finite(out, path):
    if isinstance(out, (tuple, list)):
        for i, item in enumerate(out):
            found = _first_non_finite(item, path + (i,))
            if found is not None:
                return found
        return None
    if hasattr(out, "dtype") and hasattr(out, "shape"):
        xp = namespace_of(out)
        if xp.isdtype(out.dtype, "real floating") and not bool(xp.all(xp.isfinite(out))):
            return path
    return None


def _step_maxima(x, axis: int, xp):
    """``max |x|`` of each step: ``x`` with its step axis at ``axis`` -> ``[T]``."""
    steps = xp.moveaxis(x, axis, 0)  # (T, ...)
    flat = xp.reshape(steps, (steps.shape[0], -1))  # (T, rest)
    if flat.shape[1] == 0:
        return xp.zeros((steps.shape[0],), dtype=x.dtype)
    return xp.max(xp.abs(flat), axis=1)  # (T,)


def _first_bad_step(o, xp) -> int | None:
    """The first step ``t`` whose read-out ``o [..., T, d]`` has a non-finite entry."""
    if o.ndim < 2:
        return None
    bad = xp.moveaxis(~xp.isfinite(o), -2, 0)  # (T, ..., d)
    per_step = xp.any(xp.reshape(bad, (bad.shape[0], -1)), axis=1)  # (T,)
    if not bool(xp.any(per_step)):
        return None
    return int(xp.argmax(xp.astype(per_step, xp.int8)))


def _inputs_at_step(arguments: dict, t: int) -> str:
    """The per-step inputs at step ``t`` (max |x_t|), naming the one that drove the overflow.

    An input is per step when its leading dims are ``k``'s ``[..., T]``. The
    driver is the input whose size at some step ``s <= t`` is largest against its
    median over all steps (at least 10 times); when none stands out the growth
    built up over the steps.
    """
    k = arguments.get("k")
    if k is None or not hasattr(k, "shape") or k.ndim < 2:
        return ""
    lead = tuple(k.shape[:-1])  # (..., T)
    axis = len(lead) - 1
    sizes, driver, ratio = [], None, 10.0
    for name, x in arguments.items():
        if not (hasattr(x, "shape") and hasattr(x, "dtype")) or tuple(x.shape[:len(lead)]) != lead:
            continue
        xp = namespace_of(x)
        if not xp.isdtype(x.dtype, "real floating"):
            continue
        m = _step_maxima(x, axis, xp)  # (T,)
        sizes.append(f"max |{name}_t| = {float(m[t]):.3g}")
        typical = float(xp.sort(m)[m.shape[0] // 2])  # the median step's size
        upto = m[:t + 1]  # (t + 1,) steps that can have driven step t
        s = int(xp.argmax(upto))
        peak = float(upto[s])
        r = peak / typical if typical > 0 else (math.inf if peak > 0 else 0.0)
        if r >= ratio:
            driver, ratio = (name, s, peak), r
    if not sizes:
        return ""
    if driver:
        name, s, peak = driver
        what = f"driven by {name} at step {s} (max |{name}_{s}| = {peak:.3g}, {ratio:.3g} times its median step's)"
    elif t == 0:
        what = "the first step already overflows: the inputs or step sizes are too large for each other"
    else:
        what = ("no input stands out up to that step: the growth built up over the steps (step sizes too "
                "large for the keys, or inputs too large)")
    return f"; inputs at step {t}: {', '.join(sizes)}; {what}"


def finite_outputs(fn):
    """Decorator for scans: raise :class:`DivergenceError` instead of returning nan or inf.

    Big-endian NumPy inputs are converted to the machine's byte order first (the
    same numbers; the scans compare dtypes and make arrays of the input's dtype).

    The message names the first step whose read-out (or state) is not finite and
    the per-step inputs at that step. While the check is on, NumPy's
    floating-point warnings inside the scan are silenced: an overflow becomes
    this error instead of a warning followed by a result. Costs one device
    read per call, like the input checks, and is switched off with them by
    ``refmem.options(check_finite=False)`` (then nothing is silenced either).
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def scan(*args, **kwargs):
        args = tuple(_native_arguments(a) for a in args)
        kwargs = {n: _native_arguments(a) for n, a in kwargs.items()}
        if not _OPTIONS["check_finite"]:
            return fn(*args, **kwargs)
        try:
            with floating_point_warnings_silenced():
                out = fn(*args, **kwargs)
        except DivergenceError as exc:
            if getattr(exc, "described", False) or exc.step is None:
                raise
            raise _divergence(fn.__name__, "state", exc.step, signature, args, kwargs) from None
        path = _first_non_finite(out, ())
        if path is None:
            return out
        first = path[0] if path else 0
        what = _OUTPUT_NAMES[first] if first < len(_OUTPUT_NAMES) else f"output {first}"
        step = None
        if first == 0 and isinstance(out, (tuple, list)):
            step = _first_bad_step(out[0], namespace_of(out[0]))
        raise _divergence(fn.__name__, what, step, signature, args, kwargs)

    return scan


def _native_arguments(a):
    """Big-endian NumPy arrays (alone or in a tuple state) in the machine's byte order."""
    if isinstance(a, tuple):
        return tuple(native_byte_order(x) for x in a)
    return native_byte_order(a)


def _divergence(name, what, step, signature, args, kwargs) -> DivergenceError:
    where, inputs = "", ""
    if step is not None:
        where = f" from step t = {step} on"
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            bound = None
        if bound is not None:
            inputs = _inputs_at_step(dict(bound.arguments), step)
    exc = DivergenceError(
        f"{name}: the {what} contains non-finite values{where}: the recurrence diverged or overflowed for "
        f"these inputs (e.g. an explicit l2 step with eta ||k||^2 > 2){inputs}; no result is returned",
        step=step)
    exc.described = True
    return exc


@contextlib.contextmanager
def floating_point_warnings_silenced():
    """NumPy's overflow / invalid / divide warnings off (the caller turns non-finite results into an error)."""
    from .numpy_extras import errors_ignored

    with errors_ignored():
        yield


@contextlib.contextmanager
def overflow_raises(make_error):
    """Inside, an overflow, an invalid operation (nan) or a division by 0 raises ``make_error()``, not a warning.

    For code whose every intermediate must be finite for its result to be right:
    a silent overflow can come back as a finite *wrong* number (``1 / inf = 0``),
    so checking the result alone is not enough. NumPy's floating-point errors are
    raised at the operation (:func:`refmem.numpy_extras.errors_raised`) and
    replaced by ``make_error()`` (a documented refmem error); a
    :class:`DivergenceError` raised inside passes through. Other backends do not
    signal overflow: their callers check the result for nan / inf. Switched off
    with the other checks by ``refmem.options(check_finite=False)``.
    """
    if not _OPTIONS["check_finite"]:
        yield
        return
    from .numpy_extras import errors_raised

    try:
        with errors_raised():
            yield
    except DivergenceError:
        raise
    except FloatingPointError as exc:
        raise make_error() from exc


def magnitudes(**arrays) -> str:
    """``"max |name| = 1.0e+300, ..."`` for the arrays given (None skipped): what an overflow message names."""
    parts = []
    for name, a in arrays.items():
        if a is None:
            continue
        xp = namespace_of(a)
        with floating_point_warnings_silenced():
            m = float(xp.max(xp.abs(a))) if math.prod(a.shape) else 0.0
        parts.append(f"max |{name}| = {m:.1e}")
    return ", ".join(parts)
