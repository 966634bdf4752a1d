"""Is CuPy usable here? Three ways it is not, each named; the probe never raises.

``import cupy`` succeeds on a machine without an NVIDIA driver, so importing
is not enough: the probe asks the CUDA runtime for the device count and runs
a tiny kernel, and reports the first thing that fails:

1. CuPy is not installed (or fails to import);
2. CuPy is installed but there is no usable NVIDIA driver
   (``cudaErrorInsufficientDriver``, ``cudaErrorStubLibrary``, no ``libcuda``);
3. the driver is there but there is no CUDA device (``cudaErrorNoDevice``, or
   a device count of 0).

Anything else (the tiny kernel fails to compile or gives a wrong answer,
``array_api_compat.cupy`` is missing) is reported with its exception.
The result is computed once per process (a CUDA initialisation costs about a
second) and cached.
"""

from __future__ import annotations

import importlib

# cudaError_t codes (CUDA runtime API, stable across CUDA 11-13)
CUDA_ERROR_INITIALIZATION = 3
CUDA_ERROR_STUB_LIBRARY = 34
CUDA_ERROR_INSUFFICIENT_DRIVER = 35
CUDA_ERROR_NO_DEVICE = 100
NO_DRIVER_CODES = {CUDA_ERROR_INITIALIZATION, CUDA_ERROR_STUB_LIBRARY, CUDA_ERROR_INSUFFICIENT_DRIVER}

NOT_INSTALLED = "CuPy is not installed"
NO_DRIVER = "CuPy is installed but no usable NVIDIA driver was found"
NO_DEVICE = "CuPy and the NVIDIA driver are present but there is no CUDA device"

INSTALL_HINT = 'install refmem[cupy] (CUDA 12 wheel cupy-cuda12x) or refmem[cupy-cuda13] (cupy-cuda13x)'

_cached: tuple[bool, str] | None = None


def probe() -> tuple[bool, str]:
    """``(usable, reason)`` for the ``cupy`` backend, computed once per process; never raises."""
    global _cached
    if _cached is None:
        _cached = probe_uncached()
    return _cached


def probe_uncached(import_module=importlib.import_module) -> tuple[bool, str]:
    """The probe itself; ``import_module`` is injectable so the CPU tests can simulate each failure."""
    try:
        try:
            cupy = import_module("cupy")
        except ImportError as exc:
            if getattr(exc, "name", None) == "cupy":
                return False, f"{NOT_INSTALLED} ({exc}); {INSTALL_HINT}"
            return False, f"CuPy is installed but failed to import ({exc!r})"
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDARuntimeError, or a RuntimeError about libcuda
            return False, _classify_runtime_error(exc)
        if n < 1:
            return False, f"{NO_DEVICE} (cudaGetDeviceCount returned {n})"
        return _tiny_kernel(cupy, import_module, n)
    except Exception as exc:  # the probe must never raise
        return False, f"probing CuPy raised {exc!r}"


def _classify_runtime_error(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    text = f"{type(exc).__name__}: {exc}"
    if status == CUDA_ERROR_NO_DEVICE:
        return f"{NO_DEVICE} ({text})"
    if status in NO_DRIVER_CODES or "libcuda" in str(exc) or "driver" in str(exc).lower():
        return f"{NO_DRIVER} ({text})"
    return f"the CUDA device query failed ({text})"


def _tiny_kernel(cupy, import_module, n_devices) -> tuple[bool, str]:
    """Run one elementwise kernel and one reduction; check the answer 0 + 1 + 4 + 9 = 14."""
    try:
        x = cupy.arange(4, dtype=cupy.float64)
        got = float((x * x).sum())
    except Exception as exc:
        return False, f"{n_devices} CUDA device(s) found but a tiny kernel failed ({type(exc).__name__}: {exc})"
    if got != 14.0:
        return False, f"a tiny kernel gave a wrong answer (sum of squares of 0..3 = {got}, expected 14)"
    try:
        import_module("array_api_compat.cupy")
    except ImportError as exc:
        return False, f"array_api_compat.cupy cannot be imported ({exc}); upgrade array-api-compat"
    name = _device_name(cupy)
    return True, f"CuPy {getattr(cupy, '__version__', '?')} on {n_devices} CUDA device(s){name}"


def _device_name(cupy) -> str:
    try:
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        return ": " + (name.decode() if isinstance(name, bytes) else str(name))
    except Exception:  # the name is decoration only
        return ""
