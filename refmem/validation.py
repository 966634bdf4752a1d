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
import math
from numbers import Real

from .backends import namespace_of

_OPTIONS = {"check_finite": True}


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


def check_real_floating(x, name: str, xp):
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype (float32 or float64); got {dtype_name(x.dtype)}")


def check_finite(x, name: str, xp) -> None:
    if _OPTIONS["check_finite"] and not bool(xp.all(xp.isfinite(x))):
        raise ValueError(f"{name} contains non-finite values (nan or inf); every entry must be finite")


def check_arrays(**named):
    """Check that the named arrays share one namespace and one real floating dtype; return ``xp``.

    ``None`` values are skipped (optional inputs).
    """
    present = {k: v for k, v in named.items() if v is not None}
    for k, v in present.items():
        if isinstance(v, (Real, list, tuple)) or not hasattr(v, "shape"):
            raise TypeError(f"{k} must be an array; got {type(v).__name__}")
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
        elif v.dtype != dtype:
            raise TypeError(f"{k} has dtype {dtype_name(v.dtype)} but {first} has {dtype_name(dtype)}; "
                            "all inputs must share one dtype")
    for k, v in present.items():
        check_finite(v, k, xp)
    return xp


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
    if isinstance(p, bool):
        raise TypeError(f"{name} must be a real number or array, not bool")
    if isinstance(p, Real):
        v = float(p)
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite; got {v}")
        _check_range_scalar(v, name, low, high, low_open, high_open)
        return xp.asarray(v, dtype=dtype)
    if not hasattr(p, "shape"):
        raise TypeError(f"{name} must be a real number or an array; got {type(p).__name__}")
    pxp = namespace_of(p)
    if pxp is not xp and type(pxp) is not type(xp) and getattr(pxp, "__name__", None) != getattr(xp, "__name__", None):
        raise TypeError(f"{name} is an array of another library than the other inputs")
    check_real_floating(p, name, xp)
    if p.dtype != dtype:
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
    """A scan produced non-finite outputs: the recurrence diverged or overflowed for these inputs."""


_OUTPUT_NAMES = ("o", "final state", "third output")


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


def finite_outputs(fn):
    """Decorator for scans: raise :class:`DivergenceError` instead of returning nan or inf.

    Costs one device read per call, like the input checks, and is switched off
    with them by ``refmem.options(check_finite=False)``.
    """

    @functools.wraps(fn)
    def scan(*args, **kwargs):
        out = fn(*args, **kwargs)
        if _OPTIONS["check_finite"]:
            path = _first_non_finite(out, ())
            if path is not None:
                first = path[0] if path else 0
                what = _OUTPUT_NAMES[first] if first < len(_OUTPUT_NAMES) else f"output {first}"
                raise DivergenceError(
                    f"{fn.__name__}: the {what} contains non-finite values: the recurrence diverged or overflowed "
                    "for these inputs (e.g. an explicit l2 step with eta ||k||^2 > 2); no result is returned")
        return out

    return scan
