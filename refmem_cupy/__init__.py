"""refmem_cupy: run refmem on an NVIDIA GPU through CuPy.

This package is a plugin: it registers the backend ``cupy`` under the
entry-point group ``refmem.backends`` (``cupy = "refmem_cupy:backend"`` in
``pyproject.toml``). refmem itself never imports CuPy; importing this package
does not import CuPy either; CuPy is imported only when the backend is probed
or used.

Install
-------
CuPy ships one wheel per CUDA major version; pick the one matching the
installed NVIDIA driver (``nvidia-smi`` prints the highest CUDA version the
driver supports):

- CUDA 12 (driver >= 525): ``pip install "refmem[cupy]"`` (pulls ``cupy-cuda12x``),
- CUDA 13 (driver >= 580): ``pip install "refmem[cupy-cuda13]"`` (pulls ``cupy-cuda13x``).

The extra ``cupy`` defaults to the CUDA 12 wheel because that wheel runs on
every driver from 525 on (CUDA minor-version compatibility), i.e. on far
more installed machines than the CUDA 13 wheel, which needs a 580 driver.
Never install both wheels into one environment: they provide the same
``cupy`` module.

Use
---
``refmem.use("cupy")``, ``with refmem.backend("cupy"):``, ``refmem verify
--backend cupy``, or simply pass CuPy arrays: every core function takes its
namespace (``array_api_compat.cupy``) from its inputs, and results stay on
the device. ``refmem backends`` says whether the backend is usable and, if
not, why: CuPy not installed; installed but no usable NVIDIA driver (``import
cupy`` succeeds without a driver, so the probe makes a device call and runs a
tiny kernel); driver present but no CUDA device.

Device-to-host reads
--------------------
With ``refmem.options(check_finite=False)`` a closed-form level solve and
every recurrent, chunked and mini-batch scan make no device-to-host transfer
and no device synchronisation (``tests/test_cupy.py`` proves it by making any
read raise). With the default ``check_finite=True``, input validation reads
the device once per checked array (finiteness, gate ranges). The iterative
solvers read one scalar per iteration (their stopping test) plus one at set
up (the condition estimate that sets the default tolerance).

Extras
------
Backend-specific kernels found by ``refmem.backends.extra(xp, name)``:

``solve_triangular(a, b, *, lower=False, unit_diagonal=False)``
    Batched triangular solve ``a x = b`` (SciPy's keyword names and defaults),
    :func:`refmem_cupy.kernels.solve_triangular`.
``solve(a, b)``
    ``xp.linalg.solve`` that raises ``numpy.linalg.LinAlgError`` on a singular
    system instead of returning garbage, :func:`refmem_cupy.kernels.solve`.
``peak_bytes(fn)``
    Peak memory ``fn()`` takes from CuPy's memory pool (``refmem bench``'s
    ``peak_extra_bytes``), :func:`refmem_cupy.kernels.peak_bytes`.
``synchronize()``
    Waits for the current CUDA stream (the benchmark's timer needs it). The
    CPU backends have no ``synchronize`` extra: ``extra(xp, "synchronize")``
    is ``None`` there, meaning there is nothing to wait for.
"""

from __future__ import annotations

from refmem.backends import Backend

from .availability import probe

__all__ = ["backend", "probe"]


def _load_namespace():
    import array_api_compat.cupy as xp

    return xp


def backend() -> Backend:
    """The ``cupy`` :class:`~refmem.backends.Backend` (the entry point ``refmem.backends: cupy``)."""
    from . import kernels

    return Backend(
        name="cupy",
        load_namespace=_load_namespace,
        probe=probe,
        description="CuPy (NVIDIA GPU) through array_api_compat.cupy; results stay on the device",
        extras={
            "solve_triangular": kernels.solve_triangular,
            "solve": kernels.solve,
            "synchronize": kernels.synchronize,
            "peak_bytes": kernels.peak_bytes,
        },
    )
