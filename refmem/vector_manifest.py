"""What a vector set's ``manifest.json`` must hold, and where its files may live (NumPy-free; file I/O only).

A vector set is a directory ``DIR`` written by ``refmem vectors generate``
(:mod:`refmem.vectors`, format in ``specs/README.md``). Before any case file is
read, :func:`read_manifest` proves three things about it, and raises
:class:`VectorError` naming the file, the check and the field otherwise:

schema
    every field of the manifest is present and has its type: strings are
    strings, counts are ``int`` (never ``true`` or ``1.0``), tolerances are
    finite positive numbers, shapes are lists of non-negative ints, and the
    shapes of ``q, k, v, o`` agree with the case's ``batch``, ``T``, ``d_k``,
    ``d_v``. The tables :data:`TOP_FIELDS`, :data:`SPEC_FIELDS` and
    :data:`CASE_FIELDS` are the schema of format version 1; version 2 adds the
    gradients (:data:`TOP_FIELDS_V2`, :data:`SPEC_FIELDS_V2`,
    :data:`CASE_FIELDS_V2`, and :data:`BACKWARD_FIELDS` for a case's
    ``backward`` object: cotangents shaped like the outputs, gradients shaped
    like the inputs they differentiate, a condition estimate and a tolerance
    pair per gradient). :data:`SCHEMAS` lists both.
confinement
    every path the set names (``manifest.json``, each spec folder, each case
    file) resolves, symlinks followed (``os.path.realpath``), to a path strictly
    inside ``DIR``: no ``..``, no absolute path, no symlink leading out.
completeness
    the case list of every spec is the deterministic list of
    :data:`refmem.vectors.CASES`: each case is written or listed as skipped,
    exactly once, and nothing else is listed. :func:`unlisted_files` names
    files in a spec folder that the manifest does not list.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass

FORMAT_NAME = "refmem-vectors"
FORMAT_VERSION = 2  # the version `refmem vectors generate` writes; SCHEMAS lists every version read
MANIFEST = "manifest.json"

# A spec or case name is one plain path component (it names a folder and a file).
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class VectorError(ValueError):
    """A vector file is missing, truncated, tampered with, malformed, outside its set, or of an unknown format version.

    Attributes
    ----------
    file : str
        The file that failed.
    check : str
        The check that failed (``"exists"``, ``"size"``, ``"sha256"``, ``"schema"``,
        ``"confined"``, ``"cases"``, ``"unlisted"``, ``"inputs"``, ...).
    field : str or None
        The manifest field at fault (``"specs['delta_rule'].cases[2].tolerance"``), when one is.
    """

    def __init__(self, file: str, check: str, detail: str, field: str | None = None):
        self.file, self.check, self.field = str(file), check, field
        where = f"field {field}: " if field else ""
        super().__init__(f"{file}: {check} check failed: {where}{detail}")


# ---------------------------------------------------------------- field types
# Each returns None when the value is acceptable, else what was expected.


def _is_int(x) -> bool:
    return type(x) is int  # bool is a subclass of int: true/false are not counts


def _is_number(x) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


def string(x):
    return None if isinstance(x, str) else "a string"


def plain_name(x):
    return None if isinstance(x, str) and _PLAIN_NAME.match(x) and x not in (".", "..") else "a plain name (letters, digits, _ . -)"


def count(x):
    return None if _is_int(x) and x >= 0 else "a non-negative integer"


def positive_int(x):
    return None if _is_int(x) and x >= 1 else "a positive integer"


def integer(x):
    return None if _is_int(x) else "an integer"


def positive_number(x):
    return None if _is_number(x) and x > 0 else "a finite positive number"


def sha256_hex(x):
    return None if isinstance(x, str) and _SHA256.match(x) else "64 lowercase hex digits"


def shape(x):
    return None if isinstance(x, list) and all(_is_int(n) and n >= 0 for n in x) else "a list of non-negative integers"


def string_list(x):
    return None if isinstance(x, list) and all(isinstance(s, str) for s in x) else "a list of strings"


def gate_edit(x):
    return None if x in ("drawn", "zero", "one", "per_channel") else "one of 'drawn', 'zero', 'one', 'per_channel'"


def params(x):
    if not isinstance(x, dict):
        return "an object of scalar parameters"
    ok = all(isinstance(n, str) and type(v) in (bool, int, float, str) for n, v in x.items())
    return None if ok else "an object whose values are booleans, numbers or strings"


def array_table(x):
    if not isinstance(x, dict) or not x:
        return "a non-empty object {name: {shape, dtype}}"
    for n, a in x.items():
        if not isinstance(a, dict) or set(a) != {"shape", "dtype"} or shape(a["shape"]) or a["dtype"] != "float64":
            return f"{{name: {{'shape': [ints], 'dtype': 'float64'}}}} (entry {n!r} is {a!r})"
    return None


def tolerance_table(x):
    if not isinstance(x, dict) or set(x) != {"float64", "float32"}:
        return "an object with exactly the keys 'float64' and 'float32'"
    return None if all(_is_number(t) and 0 < t < 1 for t in x.values()) else "tolerances that are numbers in (0, 1)"


def skipped_list(x):
    if isinstance(x, list) and all(isinstance(s, dict) and set(s) == {"case", "reason"} and isinstance(s["case"], str)
                                   and isinstance(s["reason"], str) for s in x):
        return None
    return "a list of {'case': str, 'reason': str}"


def case_list(x):
    return None if isinstance(x, list) and all(isinstance(c, dict) for c in x) else "a list of case objects"


def spec_table(x):
    return None if isinstance(x, dict) else "an object {spec name: entry}"


def format_version(x):
    ok = _is_int(x) and x in SCHEMAS
    return None if ok else f"an integer this refmem reads ({', '.join(map(str, sorted(SCHEMAS)))})"


# ---------------------------------------------------------------- the schema of format version 1

TOP_FIELDS = {
    "format": string,
    "format_version": format_version,
    "refmem_version": string,
    "dtype": string,
    "tolerance_rule": string,
    "specs": spec_table,
}
SPEC_FIELDS = {"description": string, "gates": string_list, "cases": case_list, "skipped": skipped_list}
CASE_FIELDS = {
    "name": plain_name,
    "why": string,
    "file": string,
    "sha256": sha256_hex,
    "bytes": count,
    "seed": integer,
    "batch": shape,
    "T": positive_int,
    "d_k": positive_int,
    "d_v": positive_int,
    "gates": gate_edit,
    "key_scale": positive_number,
    "params": params,
    "inputs": array_table,
    "outputs": array_table,
    "kappa": positive_number,
    "tolerance": tolerance_table,
}


# ---------------------------------------------------------------- the schema of format version 2 (gradients)


def number_table(x):
    if isinstance(x, dict) and all(isinstance(n, str) and _is_number(v) and v > 0 for n, v in x.items()):
        return None
    return "an object {gradient name: finite positive number}"


def tolerance_tables(x):
    if not isinstance(x, dict) or not all(isinstance(n, str) for n in x):
        return "an object {gradient name: {'float64': tol, 'float32': tol}}"
    for n, t in x.items():
        problem = tolerance_table(t)
        if problem:
            return f"{{gradient name: tolerance pair}} (entry {n!r}: expected {problem})"
    return None


def backward_case(x):
    """A case's ``backward``: ``{"skipped": reason}`` or the four tables of :data:`BACKWARD_FIELDS`."""
    if isinstance(x, dict) and set(x) == {"skipped"} and isinstance(x["skipped"], str):
        return None
    if isinstance(x, dict) and set(x) == set(BACKWARD_FIELDS):
        return None  # the tables themselves are checked field by field (check_fields)
    return f"{{'skipped': reason}} or an object with exactly {sorted(BACKWARD_FIELDS)}"


TOP_FIELDS_V2 = {**TOP_FIELDS, "gradient_tolerance_rule": string}
# backward: the VJP the expected gradients come from ("module:function"), "" for a memory without one
SPEC_FIELDS_V2 = {**SPEC_FIELDS, "backward": string}
CASE_FIELDS_V2 = {**CASE_FIELDS, "backward": backward_case}
BACKWARD_FIELDS = {
    "cotangents": array_table,  # do (shaped like o), dM_T (or dM_T.0, dM_T.1, ...: shaped like the state output(s))
    "gradients": array_table,  # one per stored input, same name and shape (initial_state.0, ... for a state of parts)
    "kappa": number_table,  # the estimated relative condition number of each gradient
    "tolerance": tolerance_tables,  # per gradient, per dtype
}


@dataclass(frozen=True)
class Schema:
    """The fields a manifest of one format version must hold, at each of its three levels."""

    top: dict
    spec: dict
    case: dict


# format_version -> its schema (the integer must be exactly one of these keys: never true, never 1.0)
SCHEMAS: dict[int, Schema] = {1: Schema(TOP_FIELDS, SPEC_FIELDS, CASE_FIELDS),
                              2: Schema(TOP_FIELDS_V2, SPEC_FIELDS_V2, CASE_FIELDS_V2)}


def check_fields(path: str, where: str, obj, fields: dict) -> None:
    """Every field of ``fields`` is present in ``obj`` and accepted by its type function."""
    if not isinstance(obj, dict):
        raise VectorError(path, "schema", f"expected an object, got {type(obj).__name__}", where or "(top level)")
    for name, kind in fields.items():
        field = f"{where}.{name}" if where else name
        if name not in obj:
            raise VectorError(path, "schema", "missing", field)
        problem = kind(obj[name])
        if problem:
            raise VectorError(path, "schema", f"expected {problem}, got {obj[name]!r:.80}", field)


def _check_case_shapes(path: str, where: str, case: dict) -> None:
    """``q, k, v`` inputs and the ``o`` output are ``batch + [T, d]``; ``o`` is shaped like ``v``.

    In the flat convention ``x`` and ``o`` are ``batch + [T, d]`` (a system's
    tokens) or ``batch + [T, d_out, d_in]`` (an optimiser's matrices), ``o`` shaped like ``x``.

    (``d`` is not tied to the case's ``d_k``, ``d_v``: a memory may need ``d_k = d_v``
    and draw its own sizes, as the deep memory does.)
    """
    lead = case["batch"] + [case["T"]]
    flat = "x" in case["inputs"] and "q" not in case["inputs"]  # the flat convention (CMS, HOPE, optimisers)
    if flat:  # o shaped like x: [..., T, d] for a system, [..., T, d_out, d_in] for an optimiser
        first = (("inputs", "x"), ("outputs", "o"))
    else:
        first = (("inputs", "q"), ("inputs", "k"), ("inputs", "v"), ("outputs", "o"))
    for role, n in first:
        if n not in case[role]:
            raise VectorError(path, "schema", f"{role[:-1]} {n!r} missing", f"{where}.{role}")
        s = case[role][n]["shape"]
        if flat and (s[:len(lead)] != lead or len(s) not in (len(lead) + 1, len(lead) + 2)):
            raise VectorError(path, "schema", f"shape {s} but batch and T give {lead} + [d] or + [d_out, d_in]",
                              f"{where}.{role}.{n}")
        if not flat and (s[:-1] != lead or len(s) != len(lead) + 1):
            raise VectorError(path, "schema", f"shape {s} but batch and T give {lead} + [d]", f"{where}.{role}.{n}")
    like = "v" if "v" in case["inputs"] else "x"
    if case["outputs"]["o"]["shape"] != case["inputs"][like]["shape"]:
        raise VectorError(path, "schema", f"shape {case['outputs']['o']['shape']}, but {like} is "
                          f"{case['inputs'][like]['shape']}", f"{where}.outputs.o")


def _check_backward(path: str, where: str, case: dict) -> None:
    """The tables of a case's ``backward`` (format version 2) and how they tie to its inputs and outputs.

    ``do`` is shaped like ``o``; ``dM_T`` (or ``dM_T.0, dM_T.1, ...``) like the
    state output(s) in order; each gradient like the input of the same name;
    ``kappa`` and ``tolerance`` name exactly the gradients.
    """
    bw = case["backward"]
    check_fields(path, where, bw, BACKWARD_FIELDS)
    cot, grads = bw["cotangents"], bw["gradients"]
    states = [n for n in case["outputs"] if n != "o"]
    want = {"do": case["outputs"]["o"]["shape"]}
    if len(states) == 1:
        want["dM_T"] = case["outputs"][states[0]]["shape"]
    else:
        want.update({f"dM_T.{i}": case["outputs"][n]["shape"] for i, n in enumerate(states)})
    if set(cot) != set(want):
        raise VectorError(path, "schema", f"cotangents {sorted(cot)}, but the outputs {sorted(case['outputs'])} "
                          f"give {sorted(want)}", f"{where}.cotangents")
    for n, s in want.items():
        if cot[n]["shape"] != s:
            raise VectorError(path, "schema", f"shape {cot[n]['shape']}, but its output is {s}", f"{where}.cotangents.{n}")
    for n, a in grads.items():
        if n not in case["inputs"]:
            raise VectorError(path, "schema", f"gradient {n!r} of no stored input ({sorted(case['inputs'])})",
                              f"{where}.gradients")
        if a["shape"] != case["inputs"][n]["shape"]:
            raise VectorError(path, "schema", f"shape {a['shape']}, but input {n!r} is {case['inputs'][n]['shape']}",
                              f"{where}.gradients.{n}")
    for table in ("kappa", "tolerance"):
        if set(bw[table]) != set(grads):
            raise VectorError(path, "schema", f"names {sorted(bw[table])}, but the gradients are {sorted(grads)}",
                              f"{where}.{table}")


# ---------------------------------------------------------------- array names of a case


def positional_names(inputs) -> tuple:
    """``("q", "k", "v")`` for a memory; ``("x",)`` for a reference in the flat convention (:mod:`refmem.flat_vectors`)."""
    return ("x",) if "x" in inputs and "q" not in inputs else ("q", "k", "v")


def flatten(inputs: dict) -> dict:
    """Tuple-valued inputs (a state made of several arrays) as ``name.0, name.1, ...`` (their names in a file)."""
    flat = {}
    for n, a in inputs.items():
        if isinstance(a, tuple):
            flat.update({f"{n}.{i}": x for i, x in enumerate(a)})
        else:
            flat[n] = a
    return flat


def unflatten(flat: dict) -> dict:
    """Inverse of :func:`flatten`."""
    out, parts = {}, {}
    for n, a in flat.items():
        base, _, idx = n.rpartition(".")
        if base and idx.isdigit():
            parts.setdefault(base, {})[int(idx)] = a
        else:
            out[n] = a
    for base, d in parts.items():
        out[base] = tuple(d[i] for i in range(len(d)))
    return out


# ---------------------------------------------------------------- confinement


def inside(root: str, rel: str) -> str | None:
    """The real path of ``root/rel`` when it lies strictly inside the real directory ``root``, else None."""
    if os.path.isabs(rel):
        return None
    real = os.path.realpath(os.path.join(root, rel))
    return real if real.startswith(root + os.sep) else None


def confined(root: str, rel: str, path_for_errors: str, field: str | None = None) -> str:
    """:func:`inside`, raising ``VectorError`` (check ``confined``) when the path leaves the set."""
    real = inside(root, rel)
    if real is None:
        raise VectorError(path_for_errors, "confined",
                          f"{rel!r} resolves to {os.path.realpath(os.path.join(root, rel))!r}, outside the vector "
                          f"directory {root!r} (absolute path, '..' or a symlink); nothing was read", field)
    return real


# ---------------------------------------------------------------- reading


def vector_root(vec_dir) -> str:
    """The real path of the vector directory (which must exist)."""
    if not isinstance(vec_dir, (str, os.PathLike)):
        raise TypeError(f"vec_dir must be a directory path (str or os.PathLike); got {type(vec_dir).__name__}")
    if not os.path.isdir(vec_dir):
        raise VectorError(os.fspath(vec_dir), "exists", "not a directory")
    return os.path.realpath(vec_dir)


def read_manifest(vec_dir, case_names) -> dict:
    """Read ``manifest.json`` and check its schema, confinement and completeness (module docstring).

    ``case_names`` is the deterministic case list every spec must cover.
    No case file is read here.
    """
    root = vector_root(vec_dir)
    path = os.path.join(os.fspath(vec_dir), MANIFEST)
    if not os.path.lexists(path):
        raise VectorError(path, "exists", "no manifest.json in the vector directory")
    real = confined(root, MANIFEST, path)
    if not os.path.isfile(real):
        raise VectorError(path, "exists", "manifest.json is not a regular file")
    try:
        with open(real, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VectorError(path, "json", f"not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise VectorError(path, "format", f"format is {got!r}, expected {FORMAT_NAME!r}")
    if format_version(manifest.get("format_version")):
        raise VectorError(path, "format_version",
                          f"format_version {manifest.get('format_version')!r} is not supported "
                          f"(this refmem reads {', '.join(map(str, sorted(SCHEMAS)))})")
    schema = SCHEMAS[manifest["format_version"]]
    check_fields(path, "", manifest, schema.top)
    for spec, entry in manifest["specs"].items():
        _check_spec(root, path, spec, entry, tuple(case_names), schema)
    return manifest


def _check_spec(root: str, path: str, spec: str, entry, case_names: tuple, schema: Schema) -> None:
    where = f"specs[{spec!r}]"
    if plain_name(spec):
        raise VectorError(path, "schema", f"a spec name must be {plain_name(spec)}; got {spec!r}", where)
    check_fields(path, where, entry, schema.spec)
    if entry["cases"]:
        confined(root, spec, path, where)  # the spec folder itself (a symlinked folder leads out)
    for i, case in enumerate(entry["cases"]):
        cw = f"{where}.cases[{i}]"
        check_fields(path, cw, case, schema.case)
        _check_case_shapes(path, cw, case)
        if "backward" in schema.case and "skipped" not in case["backward"]:
            _check_backward(path, f"{cw}.backward", case)
        confined(root, case["file"], path, f"{cw}.file")
        if case["file"] != f"{spec}/{case['name']}.npz":
            raise VectorError(path, "schema", f"{case['file']!r}, expected '{spec}/{case['name']}.npz'", f"{cw}.file")
    written = [c["name"] for c in entry["cases"]]
    skipped = [s["case"] for s in entry["skipped"]]
    if skipped == ["*"] and not written:  # a memory that cannot make inputs: every case skipped at once
        return
    listed = written + skipped
    missing = [n for n in case_names if n not in listed]
    unexpected = sorted({n for n in listed if n not in case_names})
    twice = sorted({n for n in listed if listed.count(n) > 1})
    if missing or unexpected or twice:
        parts = ([f"missing case(s) {missing} (neither written nor listed as skipped)"] if missing else []) + \
                ([f"unexpected case(s) {unexpected}"] if unexpected else []) + \
                ([f"case(s) listed twice {twice}"] if twice else [])
        raise VectorError(path, "cases", "; ".join(parts) + f"; every spec covers exactly {list(case_names)}", where)


def unlisted_files(vec_dir, manifest: dict, specs) -> list[str]:
    """Files in the folders of ``specs`` that the manifest does not list (relative paths, sorted)."""
    root = vector_root(vec_dir)
    extra = []
    for spec in specs:
        folder = os.path.join(root, spec)
        if not os.path.isdir(folder):
            continue
        listed = {c["file"] for c in manifest["specs"][spec]["cases"]}
        extra += [f"{spec}/{n}" for n in sorted(os.listdir(folder)) if f"{spec}/{n}" not in listed]
    return extra
