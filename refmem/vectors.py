r"""Test vectors: deterministic reference cases for every registered memory (NumPy-only module: file I/O).

This module is NumPy-only by design (it reads and writes files): it draws
inputs with NumPy, runs refmem's float64 reference on NumPy arrays, and writes
and reads the files. Other implementations (PyTorch, JAX, Triton kernels) are
checked against these files by :mod:`refmem.conform`.

Layout of a vector directory (format version 2, documented in ``specs/README.md``)::

    DIR/manifest.json            what is there, with sha256 and size of every file
    DIR/<spec>/<case>.npz        arrays ``in.<name>`` (inputs) and ``out.<name>`` (expected outputs),
                                 and for a memory with a backward pass ``cot.<name>`` (the cotangents
                                 ``do``, ``dM_T``) and ``grad.<input>`` (the expected gradients)

Format version 2 adds the gradients (:mod:`refmem.vector_gradients`, where their
tolerances are derived); a version 1 set (forward only) is still read and verified.

The ``.npz`` files are zip archives written here with a fixed timestamp, fixed
member order and no compression, and ``manifest.json`` is sorted JSON, so that
generating twice on the same machine gives byte-identical files. Loading never
unpickles (``allow_pickle=False``); every integrity failure raises
:class:`VectorError` naming the file and the check that failed. Before any
case file is read, the manifest's schema, the confinement of every path it
names inside the directory, and its case list are checked
(:mod:`refmem.vector_manifest`).

Tolerance of a case (stored in the manifest, one per dtype):

.. math::

    \mathrm{tol}(u) = 8\,\epsilon\,(T + d_k + d_v)\,\max(1, \hat\kappa)

with ``eps`` the machine epsilon of the dtype compared, ``T + d_k + d_v`` the
length of the longest chain of roundings a recurrent or chunked evaluation
performs (T state updates, inner products of length d_k and d_v), and
``kappa_hat`` the relative condition number of the outputs, estimated by
perturbing every input by a relative 1e-7 in random directions. The 8 covers
two roundings per multiply-add and the under-estimate of a random-direction
condition estimate. A case whose estimated condition exceeds 1e4, or whose
reference outputs exceed 1e6 (the scan diverges), is skipped (listed under
``skipped`` in the manifest): no float32 kernel can be held to it.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

from .metrics import rel_error
from .packed_sequences import CU_SEQLENS, merge_packed, split_packed
from .validation import DivergenceError
from .vector_gradients import backward_arrays, run_vjp, vjp_name
from .vector_condition import DELTA, perturb, round_up
from .vector_manifest import (FORMAT_NAME, FORMAT_VERSION, MANIFEST, SCHEMAS, VectorError, confined, flatten,
                              positional_names, unflatten, unlisted_files)
from .vector_manifest import read_manifest as _read_checked_manifest

__all__ = ["CASES", "Case", "CaseDef", "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST", "VectorError", "generate",
           "load", "read_manifest", "tolerance", "verify"]

# The fixed zip timestamp (the zip epoch): np.savez would embed the current time.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# Outputs larger than this (inputs are O(1)) mean the scan diverges: not a useful vector.
_GROWTH_MAX = 1e6
# Cases worse conditioned than this are skipped (float32 tolerance would be >~ 0.1).
_KAPPA_MAX = 1e4


@dataclass(frozen=True)
class CaseDef:
    """One edge shape of the vector suite (the same for every memory).

    ``gates``: ``"drawn"`` (the memory's own random gates), ``"zero"`` or ``"one"``
    (every gate set to that value), ``"per_channel"`` (the memory's gates drawn per
    channel: ``make_inputs(..., per_channel=True)``). ``key_scale``: keys multiplied
    by it (and step gates divided by its square). ``initial_state``: start from a
    random non-zero state. ``unit_qk``: every ``q_t`` and ``k_t`` of unit norm.
    ``qk_groups``: groups of that many consecutive heads (the last leading dim)
    share one ``q`` and ``k`` (grouped value heads). ``lengths``: a packed
    variable-length batch of sequences of these lengths (:mod:`refmem.packed_sequences`;
    ``batch`` is then ``(1, H)`` and ``T`` their sum).
    """

    name: str
    batch: tuple
    T: int
    d_k: int
    d_v: int
    gates: str = "drawn"
    key_scale: float = 1.0
    initial_state: bool = False
    why: str = ""
    unit_qk: bool = False
    qk_groups: int = 1
    lengths: tuple = ()


CASES: tuple[CaseDef, ...] = (
    CaseDef("T1", (2,), 1, 8, 8, why="a single step: no recurrence at all"),
    CaseDef("T63_heads3", (1, 3), 63, 16, 16, why="one short of a 64-token chunk"),
    CaseDef("T100_d60", (2, 2), 100, 60, 60, why="partial last chunk; d not a power of two"),
    CaseDef("dk60_dv24", (1, 2), 33, 60, 24, why="d_k != d_v: a transposed state cannot hide"),
    CaseDef("zero_gates", (2, 2), 20, 16, 16, gates="zero", initial_state=True, why="every gate 0"),
    CaseDef("unit_gates", (2, 2), 20, 16, 16, gates="one", initial_state=True, why="every gate 1"),
    CaseDef("large_keys", (2, 2), 24, 16, 16, key_scale=8.0, why="||k|| about 8, step gates / 64"),
    CaseDef("initial_state", (2, 3), 40, 16, 12, initial_state=True, why="non-zero initial state"),
    CaseDef("batch4_heads4", (4, 4), 9, 8, 8, why="several batch and head counts"),
    CaseDef("no_batch", (), 12, 8, 8, why="no leading dims at all"),
    CaseDef("per_channel_gates", (2, 2), 40, 16, 16, gates="per_channel", initial_state=True,
            why="gates per channel (fla's gk): only memories that have them"),
    CaseDef("grouped_heads", (1, 4), 24, 8, 8, qk_groups=2, initial_state=True,
            why="pairs of heads share q and k (grouped value heads); an initial state per value head"),
    CaseDef("unit_qk", (2, 2), 24, 16, 16, unit_qk=True, why="unit-norm q and k (a kernel that normalises them itself)"),
    CaseDef("varlen", (1, 2), 110, 16, 16, initial_state=True, lengths=(13, 1, 70, 26),
            why="packed sequences of lengths 13, 1, 70, 26; states reset between them"),
)


@dataclass
class Case:
    """One loaded test vector: inputs, expected outputs, tolerance; in format version 2 also the gradients.

    ``cotangents`` (``do``, ``dM_T``; a tuple for a state of several parts),
    ``gradients`` (``{input name: expected gradient}``, a state of several parts
    as ``initial_state.0, ...``) and ``gradient_tolerance`` (``{input name:
    {dtype: tol}}``) are empty for a case without gradients.
    """

    spec: str
    name: str
    file: str
    inputs: dict
    params: dict
    outputs: dict
    tolerance: dict
    meta: dict = field(default_factory=dict)
    cotangents: dict = field(default_factory=dict)
    gradients: dict = field(default_factory=dict)
    gradient_tolerance: dict = field(default_factory=dict)

    def call_kwargs(self) -> dict:
        """The keyword inputs after the positional ones (gates, parameters, ``initial_state``)."""
        kw = {n: a for n, a in self.inputs.items() if n not in positional_names(self.inputs)}
        kw.update(self.params)
        return kw


def registry() -> dict:
    """Every spec with vectors: the memories, then the references in the flat convention (nested systems, optimisers)."""
    from .memories import MEMORIES
    from .nested.vector_cases import FLAT_VECTORS
    from .optimizers.vector_cases import OPTIMIZER_VECTORS

    return {**MEMORIES, **FLAT_VECTORS, **OPTIMIZER_VECTORS}


# ---------------------------------------------------------------- generation


def case_seed(spec: str, case: str) -> int:
    """The seed of a case: a CRC32 of ``"spec/case"`` (stable across runs and machines, unlike ``hash``)."""
    return zlib.crc32(f"{spec}/{case}".encode())


def _as_outputs(result) -> dict:
    """Name what a recurrent form returns: ``o`` then ``state`` (or ``state_0, state_1, ...``)."""
    if not isinstance(result, (tuple, list)):
        return {"o": np.asarray(result)}
    out = {"o": np.asarray(result[0])}
    rest = list(result[1:])
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = list(rest[0])
    rest = [r for r in rest if r is not None]
    if len(rest) == 1:
        out["state"] = np.asarray(rest[0])
    else:
        for i, r in enumerate(rest):
            out[f"state_{i}"] = np.asarray(r)
    return out


def _run(mem, inputs: dict, params: dict) -> dict:
    if CU_SEQLENS in inputs:  # a packed variable-length case: each sequence on its own
        return merge_packed([_run(mem, one, params) for one in split_packed(inputs)])
    first = positional_names(inputs)
    arrays = {n: a for n, a in inputs.items() if n not in first}
    return _as_outputs(mem.recurrent(*(inputs[n] for n in first), **arrays, **params))


def _accepts_initial_state(fn) -> bool:
    try:
        return "initial_state" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _condition(mem, inputs, params, ref, seed) -> float:
    """Relative condition number of the outputs, estimated by two random relative input perturbations of 1e-7.

    A perturbation the memory refuses (an initial state that must stay on a
    constraint set, e.g. Memora's simplex rows) is retried with the initial
    state, then also the gates, held fixed: the estimate then covers ``q, k, v`` only.
    """
    rng = np.random.default_rng(seed + 1)
    gates = tuple(set(inputs) - set(positional_names(inputs)) - {"initial_state"})
    kappa = 0.0
    for _ in range(2):
        for fixed in ((), ("initial_state",), ("initial_state",) + gates):
            try:
                out = _run(mem, perturb(inputs, rng, fixed), params)
                break
            except (ValueError, TypeError):
                continue
        else:
            raise ValueError("no perturbation of the inputs is accepted by the memory")
        kappa = max(kappa, *(rel_error(out[n], ref[n], np) / DELTA for n in ref))
    return kappa


def tolerance(T: int, d_k: int, d_v: int, kappa: float) -> dict:
    """Per-dtype tolerance of a case: ``8 eps (T + d_k + d_v) max(1, kappa)`` (module docstring)."""
    n = T + d_k + d_v
    return {dt: round_up(8 * float(np.finfo(dt).eps) * n * max(1.0, kappa)) for dt in ("float64", "float32")}


def _build_inputs(mem, spec: str, cd: CaseDef):
    """Draw the inputs of case ``cd`` for memory ``mem``; returns ``(inputs, params)`` or raises ``ValueError``."""
    seed = case_seed(spec, cd.name)
    if cd.gates == "per_channel":
        if "per_channel" not in _parameters(mem.make_inputs):
            raise ValueError("the memory has no per-channel gates")
        raw = mem.make_inputs(seed, cd.batch, cd.T, cd.d_k, cd.d_v, np, "float64", per_channel=True)
    else:
        raw = mem.make_inputs(seed, cd.batch, cd.T, cd.d_k, cd.d_v, np, "float64")
    inputs, params = {}, {}
    for n, a in raw.items():
        if hasattr(a, "shape"):
            inputs[n] = np.asarray(a, dtype=np.float64)
        elif isinstance(a, tuple) and a and all(hasattr(x, "shape") for x in a):  # several arrays (an MLP's weights)
            inputs[n] = tuple(np.asarray(x, dtype=np.float64) for x in a)
        elif isinstance(a, (bool, int, float, str)):
            params[n] = a
        else:
            raise ValueError(f"make_inputs returned {n!r} of type {type(a).__name__}: not storable")
    first = positional_names(inputs)
    gate_names = [n for n in inputs if n not in first] if first == ("q", "k", "v") else list(mem.gates)
    if cd.gates in ("zero", "one"):
        if not gate_names:
            raise ValueError("the memory has no gates")
        fill = 0.0 if cd.gates == "zero" else 1.0
        for n in gate_names:
            inputs[n] = np.full_like(inputs[n], fill)
    if cd.key_scale != 1.0:
        if "k" not in inputs:
            raise ValueError("there are no keys to scale")
        inputs["k"] = inputs["k"] * cd.key_scale
        # the step sizes (MemorySpec.step_gates) scale like 1 / ||k||^2: dividing them by s^2 keeps
        # beta ||k||^2 in the regime the recurrence is stable in (MATH.md 3)
        for n in gate_names:
            if n in mem.step_gates:
                inputs[n] = inputs[n] / cd.key_scale**2
    if cd.unit_qk or cd.qk_groups != 1 or cd.lengths:
        _shape_qk(inputs, cd)
    if cd.initial_state:
        if not _accepts_initial_state(mem.recurrent):
            raise ValueError("the recurrent form takes no initial_state")
        make = mem.make_initial_state
        if make is not None:  # the memory's state is not the matrix it returns (e.g. Mesa's (G, H))
            per_sequence = (len(cd.lengths),) + tuple(cd.batch[1:]) if cd.lengths else cd.batch  # one state per sequence
            s0 = make(seed + 2, per_sequence, cd.d_k, cd.d_v, np, "float64")
            inputs["initial_state"] = tuple(np.asarray(a) for a in s0) if isinstance(s0, (tuple, list)) else np.asarray(s0)
        else:
            first = _run(mem, inputs, params)
            if set(first) != {"o", "state"}:
                raise ValueError("the state is not a single array and the memory registers no make_initial_state")
            rng = np.random.default_rng(seed + 2)
            inputs["initial_state"] = rng.standard_normal(first["state"].shape) / math.sqrt(cd.d_k)
    return inputs, params


def _parameters(fn) -> tuple:
    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return ()


def _shape_qk(inputs: dict, cd: CaseDef) -> None:
    """Apply ``unit_qk``, ``qk_groups`` and ``lengths`` of ``cd`` to drawn inputs (in place; ``ValueError`` if they do not apply)."""
    if "k" not in inputs:
        raise ValueError("the case shapes q and k, and this reference has none")
    if cd.unit_qk:
        for n in ("q", "k"):
            inputs[n] = inputs[n] / np.linalg.norm(inputs[n], axis=-1, keepdims=True)  # (..., T, d) / (..., T, 1)
    if cd.qk_groups != 1:
        G = cd.qk_groups
        if not cd.batch or cd.batch[-1] % G:
            raise ValueError(f"qk_groups {G} must divide the head count (last leading dim) of batch {cd.batch}")
        for n in ("q", "k"):  # head h reads q, k of head G * (h // G): (.., H, T, d)
            inputs[n] = np.repeat(inputs[n][..., ::G, :, :], G, axis=-3)
    if cd.lengths:
        if len(cd.batch) != 2 or cd.batch[0] != 1 or sum(cd.lengths) != cd.T:
            raise ValueError(f"a packed case needs batch (1, H) and T = sum(lengths); got {cd.batch}, T = {cd.T}")
        inputs[CU_SEQLENS] = np.concatenate([[0.0], np.cumsum(cd.lengths, dtype=np.float64)])  # (N + 1,)


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(a), allow_pickle=False)  # keeps 0-d arrays 0-d
    return buf.getvalue()


def npz_bytes(arrays: dict) -> bytes:
    """``arrays`` as the bytes of an ``.npz``, identical for identical arrays (fixed timestamp, sorted, stored)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3  # unix, whatever the host: the header bytes must not depend on it
            info.external_attr = 0o644 << 16
            zf.writestr(info, _npy_bytes(arrays[name]))
    return buf.getvalue()


def write_npz(path: str, arrays: dict) -> None:
    """Write ``arrays`` as an ``.npz`` that is byte-identical for identical arrays (:func:`npz_bytes`)."""
    with open(path, "wb") as fh:
        fh.write(npz_bytes(arrays))


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def build_case(spec: str, cd: CaseDef) -> dict:
    """One case of memory ``spec``, computed but not written: ``{"skipped": reason}`` or ``{"case": entry, "npz": bytes}``.

    ``entry`` is the case's manifest entry (its ``sha256`` and ``bytes`` those of
    ``npz``). Nothing here touches the disk, so the case can be computed on
    another process or machine and written by the caller (:func:`generate`).
    """
    mem = registry()[spec]
    try:
        inputs, params = _build_inputs(mem, spec, cd)
        ref = _run(mem, inputs, params)
    except (ValueError, TypeError) as exc:  # e.g. a gate of 0 outside the memory's range: not applicable
        return {"skipped": f"not applicable: {exc}"}
    except DivergenceError:  # the scan refuses to return nan/inf
        return {"skipped": "the reference output is not finite"}
    if not all(np.all(np.isfinite(a)) for a in ref.values()):
        return {"skipped": "the reference output is not finite"}
    growth = max(float(np.max(np.abs(a))) if a.size else 0.0 for a in ref.values())
    if growth > _GROWTH_MAX:  # inputs are O(1) (keys O(8)): outputs this large mean the scan diverges
        return {"skipped": f"the reference diverges (max |output| {growth:.1e} > {_GROWTH_MAX:.0e})"}
    seed = case_seed(spec, cd.name)
    try:
        kappa = _condition(mem, inputs, params, ref, seed)
    except DivergenceError:  # a perturbation of 1e-7 makes the scan diverge: as ill-conditioned as it gets
        kappa = math.inf
    if not math.isfinite(kappa) or kappa > _KAPPA_MAX:
        return {"skipped": f"ill-conditioned (kappa about {kappa:.1e} > {_KAPPA_MAX:.0e})"}
    arrays = {f"in.{n}": a for n, a in flatten(inputs).items()}
    arrays.update({f"out.{n}": a for n, a in ref.items()})
    grad_arrays, backward = backward_arrays(mem, seed, inputs, params, ref, cd)
    arrays.update(grad_arrays)
    arrays["format_version"] = np.asarray(FORMAT_VERSION, dtype=np.int64)
    data = npz_bytes(arrays)
    entry = {
        "name": cd.name,
        "why": cd.why,
        "file": f"{spec}/{cd.name}.npz",
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "seed": seed,
        "batch": list(cd.batch),
        "T": cd.T,
        "d_k": cd.d_k,
        "d_v": cd.d_v,
        "gates": cd.gates,
        "key_scale": cd.key_scale,
        "params": params,
        "inputs": {n: {"shape": list(a.shape), "dtype": str(a.dtype)} for n, a in flatten(inputs).items()},
        "outputs": {n: {"shape": list(a.shape), "dtype": str(a.dtype)} for n, a in ref.items()},
        "kappa": round_up(max(kappa, 1.0)),
        "tolerance": tolerance(cd.T, cd.d_k, cd.d_v, kappa),
        "backward": backward,
    }
    return {"case": entry, "npz": data}


def _build_case_task(item: tuple) -> dict:
    """:func:`build_case` of one ``(spec, CaseDef)`` pair: a task of :func:`refmem.pool.run_tasks`."""
    return build_case(*item)


def _spec_entry(spec: str, out_dir: str, built: list) -> dict:
    """Write the built cases of ``spec`` (in :data:`CASES` order) under ``out_dir/spec/``; return its manifest entry."""
    mem = registry()[spec]
    entry = {"description": mem.description, "gates": list(mem.gates), "cases": [], "skipped": [], "backward": vjp_name(mem)}
    if mem.make_inputs is None:
        entry["skipped"].append({"case": "*", "reason": "the memory registers no make_inputs"})
        return entry
    os.makedirs(os.path.join(out_dir, spec), exist_ok=True)
    for cd, result in zip(CASES, built):
        if "skipped" in result:
            entry["skipped"].append({"case": cd.name, "reason": result["skipped"]})
            continue
        with open(os.path.join(out_dir, result["case"]["file"]), "wb") as fh:
            fh.write(result["npz"])
        entry["cases"].append(result["case"])
    return entry


def generate_spec(spec: str, out_dir: str) -> dict:
    """Write the cases of memory ``spec`` under ``out_dir/spec/`` (in this process); return its manifest entry."""
    built = [build_case(spec, cd) for cd in CASES] if registry()[spec].make_inputs is not None else []
    return _spec_entry(spec, out_dir, built)


def generate(out_dir: str, specs=None, *, workers: int = 1, client=None, desc: str | None = None) -> dict:
    """Write vectors for ``specs`` (default: every registered memory) and ``manifest.json``; return the manifest.

    Every (spec, case) is an independent task of :func:`refmem.pool.run_tasks`
    (``workers`` processes, default 1: here; or a Dask ``client``), computed with
    one BLAS thread; this process writes every file, so the directory is
    byte-identical whatever ran the cases. ``desc`` labels a progress bar (shown
    on a terminal only).
    """
    from . import __version__
    from .pool import check_workers, run_tasks

    known = registry()
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a directory path (str or os.PathLike); got {type(out_dir).__name__}")
    if isinstance(specs, str):  # one name, not its characters
        specs = [specs]
    names = sorted(known) if not specs else list(specs)
    if not all(isinstance(s, str) for s in names):
        raise TypeError(f"specs must be memory names (str); got {names!r:.120}")
    unknown = [s for s in names if s not in known]
    if unknown:
        raise ValueError(f"unknown spec(s) {unknown}; specs with vectors: {sorted(known)}")
    check_workers(workers)
    names = sorted(set(names))
    items = [(s, cd) for s in names if known[s].make_inputs is not None for cd in CASES]
    results = iter(run_tasks(_build_case_task, items, workers=workers, client=client, desc=desc))
    os.makedirs(out_dir, exist_ok=True)
    entries = {}
    for s in names:
        built = [next(results) for _ in CASES] if known[s].make_inputs is not None else []
        entries[s] = _spec_entry(s, out_dir, built)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "refmem_version": __version__,
        "dtype": "float64",
        "tolerance_rule": "8 * eps(dtype) * (T + d_k + d_v) * max(1, kappa), rounded up to 2 digits",
        "gradient_tolerance_rule": "per gradient: 8 * eps(dtype) * 2 * (T + d_k + d_v) * max(1, kappa of that gradient), "
                                   "rounded up to 2 digits",
        "specs": entries,
    }
    with open(os.path.join(out_dir, MANIFEST), "w", encoding="utf-8", newline="\n") as fh:
        fh.write(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


# ---------------------------------------------------------------- loading


def read_manifest(vec_dir: str) -> dict:
    """Read ``manifest.json`` and check its schema, confinement and case list (:mod:`refmem.vector_manifest`)."""
    return _read_checked_manifest(vec_dir, [cd.name for cd in CASES])


def _load_case(vec_dir: str, spec: str, meta: dict, version: int = FORMAT_VERSION) -> Case:
    """Read one case file of format ``version`` (the manifest's, already checked); every check that can fail names the file."""
    root = os.path.realpath(vec_dir)
    path = os.path.join(vec_dir, meta["file"])
    real = confined(root, meta["file"], path)  # checked with the manifest; again here, just before the read
    if not os.path.isfile(real):
        raise VectorError(path, "exists", "listed in manifest.json but missing")
    size = os.path.getsize(real)
    if size != meta["bytes"]:
        raise VectorError(path, "size", f"{size} bytes but manifest.json says {meta['bytes']} (truncated or extended)")
    digest = _sha256(real)
    if digest != meta["sha256"]:
        raise VectorError(path, "sha256", f"sha256 {digest[:16]}... does not match manifest.json {meta['sha256'][:16]}... (tampered)")
    try:
        with np.load(real, allow_pickle=False) as npz:
            arrays = {n: npz[n] for n in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise VectorError(path, "load", f"not a readable npz without pickle ({type(exc).__name__}: {exc})") from None
    file_version = arrays.pop("format_version", None)
    if (file_version is None or file_version.shape != () or file_version.dtype != np.int64
            or int(file_version) != version):
        shown = None if file_version is None else f"{file_version.tolist()!r} ({file_version.dtype})"
        raise VectorError(path, "format_version", f"file format_version {shown}, but manifest.json is format version "
                          f"int64 {version} (this refmem reads {', '.join(map(str, sorted(SCHEMAS)))})")
    prefixes = ("in.", "out.", "cot.", "grad.") if version >= 2 else ("in.", "out.")
    inputs = {n[3:]: a for n, a in arrays.items() if n.startswith("in.")}
    outputs = {n[4:]: a for n, a in arrays.items() if n.startswith("out.")}
    cotangents = {n[4:]: a for n, a in arrays.items() if n.startswith("cot.")}
    gradients = {n[5:]: a for n, a in arrays.items() if n.startswith("grad.")}
    other = sorted(n for n in arrays if not n.startswith(prefixes))
    if other:
        raise VectorError(path, "arrays", f"unexpected member(s) {other}")
    backward = meta.get("backward", {"skipped": "format version 1"})
    tables = [("inputs", inputs, meta["inputs"]), ("outputs", outputs, meta["outputs"])]
    if "skipped" in backward:
        tables += [("cotangents", cotangents, {}), ("gradients", gradients, {})]
    else:
        tables += [("cotangents", cotangents, backward["cotangents"]), ("gradients", gradients, backward["gradients"])]
    for role, got, want in tables:
        if set(got) != set(want):
            raise VectorError(path, "arrays", f"{role} {sorted(got)} but manifest.json lists {sorted(want)}")
        for n, a in got.items():
            if list(a.shape) != want[n]["shape"] or str(a.dtype) != want[n]["dtype"]:
                raise VectorError(path, "arrays", f"{role[:-1]} {n!r} is {a.dtype}{list(a.shape)}, manifest.json says {want[n]['dtype']}{want[n]['shape']}")
            if not np.all(np.isfinite(a)):
                raise VectorError(path, "finite", f"{role[:-1]} {n!r} holds {int(np.sum(~np.isfinite(a)))} non-finite value(s)")
    return Case(spec, meta["name"], path, unflatten(inputs), dict(meta["params"]), outputs, dict(meta["tolerance"]), meta,
                unflatten(cotangents), gradients, dict(backward.get("tolerance", {})))


def load(vec_dir: str, spec: str | None = None) -> list[Case]:
    """Load (and integrity-check) every case of ``spec`` (default: all) from ``vec_dir``.

    The manifest is checked whole (schema, confinement, case list) before any
    case file is read; a file in a loaded spec's folder that the manifest does
    not list is a :class:`VectorError` (check ``unlisted``).
    """
    if spec is not None and not isinstance(spec, str):
        raise TypeError(f"spec must be a string (a registered memory name); got {type(spec).__name__}")
    manifest = read_manifest(vec_dir)
    path = os.path.join(vec_dir, MANIFEST)
    if spec is not None and spec not in manifest["specs"]:
        raise VectorError(path, "spec", f"no vectors for spec {spec!r}; has {sorted(manifest['specs'])}")
    names = [spec] if spec is not None else sorted(manifest["specs"])
    extra = unlisted_files(vec_dir, manifest, names)
    if extra:
        raise VectorError(path, "unlisted", f"file(s) {extra} are in the vector directory but not listed in manifest.json")
    version = manifest["format_version"]
    return [_load_case(vec_dir, s, meta, version) for s in names for meta in manifest["specs"][s]["cases"]]


def verify(vec_dir: str, spec: str | None = None) -> list[dict]:
    """Integrity-check every file, recompute every case with the current refmem and compare.

    Returns one row per (case, output) with ``rel_error`` (``max|a - b| / max|b|``)
    and the case's float64 tolerance, then (format version 2) one row per
    (case, gradient), the output named ``d<input>`` (``dq``, ``dbeta``,
    ``dinitial_state``), with that gradient's float64 tolerance. Integrity
    failures raise :class:`VectorError`, and so do inputs the memory's own
    input checks refuse (check ``inputs``).
    """
    known = registry()
    rows = []
    for case in load(vec_dir, spec):
        if case.spec not in known:
            raise VectorError(case.file, "spec", f"spec {case.spec!r} is not a registered memory in this refmem")
        try:
            got = _run(known[case.spec], case.inputs, case.params)
        except DivergenceError as exc:
            raise VectorError(case.file, "inputs", f"the {case.spec} scan diverges on the stored inputs ({exc})") from None
        except (ValueError, TypeError) as exc:
            raise VectorError(case.file, "inputs", f"the stored inputs fail {case.spec}'s own input checks ({exc})") from None
        tol = case.tolerance["float64"]
        for n, want in case.outputs.items():
            if n not in got or got[n].shape != want.shape:
                rows.append({"spec": case.spec, "case": case.name, "output": n, "rel_error": math.inf, "tolerance": tol,
                             "ok": False, "file": case.file})
                continue
            err = rel_error(got[n], want, np)
            rows.append({"spec": case.spec, "case": case.name, "output": n, "rel_error": err, "tolerance": tol,
                         "ok": err <= tol, "file": case.file})
        rows += _verify_gradients(known[case.spec], case)
    return rows


def _verify_gradients(mem, case: Case) -> list[dict]:
    """One row per stored gradient: refmem's VJP now against the file (none for a case without gradients)."""
    if not case.gradients:
        return []
    if getattr(mem, "backward", None) is None:
        raise VectorError(case.file, "spec", f"the file holds gradients but {case.spec} has no backward pass in this refmem")
    try:
        got = run_vjp(mem, case.inputs, case.params, case.cotangents)
    except DivergenceError as exc:
        raise VectorError(case.file, "inputs", f"the {case.spec} VJP overflows on the stored inputs ({exc})") from None
    except (ValueError, TypeError) as exc:
        raise VectorError(case.file, "cotangents", f"the stored cotangents fail {case.spec}'s VJP checks ({exc})") from None
    rows = []
    for n, want in case.gradients.items():
        tol = case.gradient_tolerance[n]["float64"]
        err = rel_error(got[n], want, np) if n in got and got[n].shape == want.shape else math.inf
        rows.append({"spec": case.spec, "case": case.name, "output": f"d{n}", "rel_error": err, "tolerance": tol,
                     "ok": err <= tol, "file": case.file})
    return rows


def main_generate(args, client=None) -> int:
    manifest = generate(args.out, args.spec, workers=args.workers, client=client, desc="vectors")
    n = sum(len(e["cases"]) for e in manifest["specs"].values())
    g = sum("skipped" not in c["backward"] for e in manifest["specs"].values() for c in e["cases"])
    print(f"wrote {n} cases ({g} with gradients) for {len(manifest['specs'])} spec(s) to {args.out}")
    for s, e in manifest["specs"].items():
        for sk in e["skipped"]:
            print(f"  skipped {s}/{sk['case']}: {sk['reason']}")
        for c in e["cases"]:
            if e["backward"] and "skipped" in c["backward"]:  # a memory with a backward pass, this case without gradients
                print(f"  no gradients in {s}/{c['name']}: {c['backward']['skipped']}")
    return 0


def _is_gradient_row(row: dict) -> bool:
    """A row of :func:`verify` that compares a gradient (``d<input>``), not a forward output."""
    return row["output"] not in ("o", "state") and not row["output"].startswith("state_")


def main_verify(args) -> int:
    try:
        rows = verify(args.dir, args.spec)
    except VectorError as exc:
        print(f"refmem vectors verify: FAIL: {exc}")
        return 1
    bad = [r for r in rows if not r["ok"]]
    for r in bad:
        print(f"FAIL {r['spec']}/{r['case']} output {r['output']}: rel error {r['rel_error']:.2e} > tol {r['tolerance']:.1e} ({r['file']})")
    for kind, part in (("outputs", [r for r in rows if not _is_gradient_row(r)]), ("gradients", [r for r in rows if _is_gradient_row(r)])):
        if part or kind == "outputs":
            worst = max((r["rel_error"] for r in part), default=0.0)
            print(f"{sum(r['ok'] for r in part)} of {len(part)} {kind} match (largest relative error {worst:.2e})")
    return 1 if bad or not rows else 0
