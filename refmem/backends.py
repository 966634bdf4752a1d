"""Array backends: which array library refmem computes with.

Every core function takes its namespace ``xp`` from its array inputs
(:func:`namespace_of`), so NumPy arrays in give NumPy arrays out, strict
arrays in give strict arrays out, CuPy arrays in give CuPy arrays out. The
*current* backend only matters where arrays are made from nothing (seeded
random problems, the verify checks); :func:`use` and :func:`backend` set it.

Backends are discovered through the entry-point group ``refmem.backends``.
An entry point names a zero-argument callable that returns a :class:`Backend`.
refmem ships ``numpy``, ``array_api_strict``, ``torch`` and ``jax`` (the last
two are usable where ``refmem[torch]`` / ``refmem[jax]`` is installed, and are
imported only when probed or used); the ``refmem_cupy`` package adds ``cupy``
the same way, so refmem itself never imports CuPy, torch or JAX at import time.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from dataclasses import dataclass, field
from typing import Any, Callable

import array_api_compat

ENTRY_POINT_GROUP = "refmem.backends"


class BackendError(ValueError):
    """An unknown or unusable backend was asked for."""


@dataclass
class Backend:
    """One array library refmem can run on.

    Parameters
    ----------
    name : str
        Name used by ``refmem.use(name)`` and ``--backend name``.
    load_namespace : callable
        Returns the array-API namespace (imports lazily).
    probe : callable
        Returns ``(usable, reason)``; ``reason`` says why not when unusable
        (not installed, no driver, no device, ...). Must not raise.
    description : str
        One line for ``refmem backends``.
    extras : dict
        Optional backend-specific kernels beyond the array API standard, by
        name (e.g. ``"solve_triangular"``). The core looks these up with
        :func:`extra` and falls back to a pure array-API version.
    """

    name: str
    load_namespace: Callable[[], Any]
    probe: Callable[[], tuple[bool, str]]
    description: str = ""
    extras: dict[str, Callable] = field(default_factory=dict)

    def namespace(self):
        usable, reason = self.probe()
        if not usable:
            raise BackendError(f"backend {self.name!r} is not usable: {reason}")
        return self.load_namespace()


def _module_probe(module: str) -> Callable[[], tuple[bool, str]]:
    def probe() -> tuple[bool, str]:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # not installed
            return False, f"{module} is not installed ({exc})"
        return True, f"{module} importable"

    return probe


def numpy_backend() -> Backend:
    """The default backend: NumPy through ``array_api_compat.numpy``."""

    def load():
        import array_api_compat.numpy as xp

        return xp

    def solve_triangular(a, b, *, lower=False, unit_diagonal=False):
        # batched BLAS trsm (NumPy/SciPy-only module, imported lazily): the chunked forms' fast path
        from .numpy_extras import solve_triangular as kernel

        return kernel(a, b, lower=lower, unit_diagonal=unit_diagonal)

    def solve_triangular_in_place(a, b, *, lower=False, unit_diagonal=False):
        # the same, writing x over b where b allows it (a temporary its caller gives up): no copy of b
        from .numpy_extras import solve_triangular as kernel

        return kernel(a, b, lower=lower, unit_diagonal=unit_diagonal, overwrite_b=True)

    return Backend("numpy", load, _module_probe("numpy"), "NumPy (CPU), the float64 oracle default",
                   extras={"solve_triangular": solve_triangular, "solve_triangular_in_place": solve_triangular_in_place})


def array_api_strict_backend() -> Backend:
    """``array_api_strict``: the standard and nothing more (a stand-in for a foreign backend)."""

    def load():
        import array_api_strict as xp

        return xp

    return Backend(
        "array_api_strict",
        load,
        _module_probe("array_api_strict"),
        "array_api_strict (CPU): the standard only; catches non-portable calls",
    )


def torch_backend() -> Backend:
    """PyTorch tensors (CPU, or the tensors' own device) through ``array_api_compat.torch``.

    Usable where ``torch`` imports (``pip install "refmem[torch]"``). Tensors
    that require grad flow through every scan: torch's autograd differentiates
    refmem's own forward (the witness the hand-written backward passes are
    checked against).
    """

    def load():
        import array_api_compat.torch as xp

        return xp

    def solve_triangular(a, b, *, lower=False, unit_diagonal=False):
        import torch

        return torch.linalg.solve_triangular(a, b, upper=not lower, unitriangular=unit_diagonal)

    return Backend("torch", load, _module_probe("torch"), "PyTorch (CPU or its device), autograd-capable",
                   extras={"solve_triangular": solve_triangular})


def jax_backend() -> Backend:
    """JAX arrays through ``jax.numpy`` (the standard namespace itself).

    Usable where ``jax`` imports (``pip install "refmem[jax]"``). JAX arrays are
    immutable, so the core never writes into an array. Loading the namespace
    switches on JAX's 64-bit mode (``jax_enable_x64``): without it JAX silently
    turns float64 inputs into float32, and refmem is a float64 oracle. Arrays
    passed in directly keep the dtype JAX gave them.
    """

    def load():
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as xp

        return xp

    def solve_triangular(a, b, *, lower=False, unit_diagonal=False):
        import jax.scipy.linalg

        return jax.scipy.linalg.solve_triangular(a, b, lower=lower, unit_diagonal=unit_diagonal)

    return Backend("jax", load, _module_probe("jax"), "JAX (CPU or its device), 64-bit mode, autodiff-capable",
                   extras={"solve_triangular": solve_triangular})


_BUILTIN = {"numpy": numpy_backend, "array_api_strict": array_api_strict_backend,
            "torch": torch_backend, "jax": jax_backend}
_registry: dict[str, Backend] | None = None
_load_errors: dict[str, str] = {}
_current = "numpy"


def _discover() -> dict[str, Backend]:
    global _registry
    if _registry is not None:
        return _registry
    found: dict[str, Backend] = {name: factory() for name, factory in _BUILTIN.items()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found and ep.value.startswith("refmem.backends:"):
            continue
        try:
            found[ep.name] = ep.load()()
        except Exception as exc:  # a broken plugin must not break refmem
            _load_errors[ep.name] = f"entry point {ep.value} failed to load: {exc!r}"
    _registry = found
    return found


def register(backend: Backend) -> None:
    """Register a backend by hand (plugins normally use the entry point)."""
    _discover()[backend.name] = backend


def available() -> list[dict[str, Any]]:
    """Every known backend with ``name``, ``usable``, ``reason``, ``description``."""
    rows = []
    for name, b in sorted(_discover().items()):
        try:
            usable, reason = b.probe()
        except Exception as exc:  # a probe must not raise; report if it does
            usable, reason = False, f"probe raised {exc!r}"
        rows.append({"name": name, "usable": usable, "reason": reason, "description": b.description})
    for name, err in sorted(_load_errors.items()):
        rows.append({"name": name, "usable": False, "reason": err, "description": ""})
    return rows


def usable_names() -> list[str]:
    return [r["name"] for r in available() if r["usable"]]


def get_backend(name: str) -> Backend:
    """The :class:`Backend` called ``name``; a clear error if unknown or unusable."""
    reg = _discover()
    if name not in reg:
        why = f" ({_load_errors[name]})" if name in _load_errors else ""
        raise BackendError(f"unknown backend {name!r}{why}; usable backends: {', '.join(usable_names())}")
    b = reg[name]
    usable, reason = b.probe()
    if not usable:
        raise BackendError(f"backend {name!r} is not usable: {reason}; usable backends: {', '.join(usable_names())}")
    return b


def use(name: str) -> None:
    """Make ``name`` the current backend for arrays created from nothing.

    Examples
    --------
    >>> from refmem.backends import current_name, use
    >>> before = current_name()
    >>> use("array_api_strict")
    >>> current_name()
    'array_api_strict'
    >>> use("no_such_backend")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    refmem.backends.BackendError: ...
    >>> use(before)
    """
    global _current
    get_backend(name)
    _current = name


@contextlib.contextmanager
def backend(name: str):
    """``with refmem.backend("array_api_strict"): ...`` sets the current backend inside the block.

    Examples
    --------
    >>> from refmem.backends import backend, current_name
    >>> before = current_name()
    >>> with backend("array_api_strict") as xp:
    ...     print(current_name(), xp.__name__)
    array_api_strict array_api_strict
    >>> current_name() == before
    True
    """
    global _current
    get_backend(name)
    previous, _current = _current, name
    try:
        yield get_backend(name).namespace()
    finally:
        _current = previous


def current_name() -> str:
    return _current


def current_namespace():
    """The array namespace of the current backend."""
    return get_backend(_current).namespace()


def namespace_of(*arrays):
    """The array namespace shared by ``arrays`` (``None`` entries ignored).

    Raises ``TypeError`` naming the problem when arrays come from different
    libraries, or when something is not an array at all.
    """
    present = [a for a in arrays if a is not None]
    try:
        return array_api_compat.array_namespace(*present)
    except TypeError as exc:
        kinds = sorted({type(a).__module__ + "." + type(a).__name__ for a in present})
        raise TypeError(f"inputs must be arrays of one array library; got {', '.join(kinds)} ({exc})") from None


def name_of_namespace(xp) -> str:
    """The registered backend name whose namespace is ``xp`` (for dispatching extras)."""
    if array_api_compat.is_numpy_namespace(xp):
        return "numpy"
    if array_api_compat.is_cupy_namespace(xp):
        return "cupy"
    if array_api_compat.is_array_api_strict_namespace(xp):
        return "array_api_strict"
    if array_api_compat.is_torch_namespace(xp):
        return "torch"
    if array_api_compat.is_jax_namespace(xp):
        return "jax"
    return getattr(xp, "__name__", repr(xp))


def host_resident(xp) -> bool:
    """Whether arrays of ``xp`` live in host memory, so reading a value costs no device transfer.

    Data-dependent fast paths (e.g. "no gate is zero, skip the zero bookkeeping")
    need to read the data; refmem takes them only where that read is free (NumPy,
    array_api_strict) and uses the general, read-free path on device backends, so
    a scan on a GPU never waits on a device-to-host copy.
    """
    return name_of_namespace(xp) in ("numpy", "array_api_strict")


def extra(xp, name: str):
    """Backend-specific kernel ``name`` for namespace ``xp``, or ``None`` if it has none."""
    reg = _discover()
    b = reg.get(name_of_namespace(xp))
    return None if b is None else b.extras.get(name)
