"""The command line answers every user error with one line naming the argument, never a traceback.

Each row of :data:`BAD` is run as a subprocess (``python -m refmem ...``), as a
user would, and must: exit with the documented status (2 a usage error, 1 a
check that ran and failed), print no ``Traceback``, name the argument or the
name at fault, and, for a usage error, print exactly one line on stderr and
nothing on stdout (so it failed before any work started).
"""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from refmem import __version__
from refmem.cli import build_parser
from refmem.vectors import generate

KERNELS = {
    "bad_syntax.py": "def fn(q, k, v:\n    return q\n",
    "raises_at_import.py": "raise RuntimeError('no GPU here')\n",
    "exits_at_import.py": "import sys\nsys.exit(3)\n",
    "good.py": (
        "import sys\n"
        "CONST = 3\n"
        "def fn(q, k, v, **kw):\n    return v, None\n"
        "def exits_when_called(q, k, v, **kw):\n    sys.exit(5)\n"
        "def bad_convert(a):\n    raise TypeError('cannot convert float64')\n"
    ),
}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A working directory holding the kernels above, a plain file, an empty directory and delta_rule vectors."""
    d = tmp_path_factory.mktemp("cli")
    for name, text in KERNELS.items():
        (d / name).write_text(text)
    (d / "plainfile").write_text("not a directory")
    (d / "empty").mkdir()
    generate(str(d / "vectors"), ["delta_rule"])
    if os.geteuid() == 0:  # root writes through file modes; /proc/version refuses writes even to root
        unwritable = "/proc/version"
    else:
        unwritable = str(d / "readonly.json")
        (d / "readonly.json").write_text("[]")
        os.chmod(d / "readonly.json", 0o444)
    return d, unwritable


# (argv, exit status, substrings the message must contain). {d}: the working directory; {ro}: an unwritable file.
BAD = [
    # verify
    ("verify --json {d}/missing/rows.json", 2, ["--json", "does not exist"]),
    ("verify --json {d}", 2, ["--json", "is a directory"]),
    ("verify --json {ro}", 2, ["--json", "cannot be written"]),
    ("verify --json {d}/plainfile/rows.json", 2, ["--json"]),
    ("verify --spec nosuch", 2, ["--spec 'nosuch'", "known:", "delta_rule"]),
    ("verify --spec delta_rule --spec nosuch", 2, ["--spec 'nosuch'"]),
    ("verify --backend nosuch", 2, ["nosuch"]),
    ("verify --bogus-flag", 2, ["--bogus-flag"]),
    # list
    ("list --kind nosuch", 2, ["--kind 'nosuch'", "memory"]),
    # bench
    ("bench --memory unknown", 2, ["--memory 'unknown'", "delta_rule"]),
    ("bench --memory delta_rule --seq-len 0", 2, ["--seq-len", "positive integer"]),
    ("bench --memory delta_rule --batch -3", 2, ["--batch", "positive integer"]),
    ("bench --memory delta_rule --heads 0", 2, ["--heads"]),
    ("bench --memory delta_rule --dim abc", 2, ["--dim", "'abc'"]),
    ("bench --memory delta_rule --chunk 0", 2, ["--chunk"]),
    ("bench --memory delta_rule --repeat 0", 2, ["--repeat"]),
    ("bench --memory delta_rule --threads 0", 2, ["--threads"]),
    ("bench --memory delta_rule --workers 0", 2, ["--workers", "positive integer", "got 0"]),
    ("bench --memory delta_rule --workers -1", 2, ["--workers", "positive integer", "got -1"]),
    ("bench --memory delta_rule --workers x", 2, ["--workers", "'x'"]),
    ("bench --memory delta_rule --workers 2 --scheduler tcp://127.0.0.1:1", 2, ["--workers and --scheduler"]),
    ("bench --memory delta_rule --dtype float16", 2, ["--dtype", "float16"]),
    ("bench --memory delta_rule --seq-len 100000000 --chunk 100000000", 2, ["--seq-len 100000000", "GiB", "available"]),
    ("bench --memory delta_rule --batch 64 --heads 64 --seq-len 1000000 --dim 512", 2, ["--dim 512", "GiB"]),
    ("bench --memory delta_rule --seq-len 8 --json {d}", 2, ["--json", "is a directory"]),
    ("bench --memory delta_rule --seq-len 8 --backend nosuch", 2, ["nosuch"]),
    # vectors
    ("vectors generate --out {d}/v2 --spec unknown", 2, ["--spec 'unknown'", "delta_rule"]),
    ("vectors generate --out {d}/plainfile", 2, ["--out", "not a directory"]),
    ("vectors generate --out {d}/plainfile/sub", 2, ["--out", "cannot be written"]),
    ("vectors generate", 2, ["--out"]),
    ("vectors", 2, ["generate", "verify"]),
    ("vectors verify {d}/nosuchdir", 2, ["nosuchdir", "not a directory"]),
    ("vectors verify {d}/vectors --spec nosuch", 2, ["--spec 'nosuch'"]),
    ("vectors verify {d}/empty", 1, ["manifest.json", "exists check failed"]),
    # conform: the target
    ("conform bad_syntax:fn --spec delta_rule", 2, ["bad_syntax", "syntax error", "line 1"]),
    ("conform raises_at_import:fn --spec delta_rule", 2, ["raises_at_import", "RuntimeError", "no GPU here"]),
    ("conform exits_at_import:fn --spec delta_rule", 2, ["exits_at_import", "sys.exit(3)"]),
    ("conform nosuchmodule:fn --spec delta_rule", 2, ["nosuchmodule"]),
    ("conform good:missing --spec delta_rule", 2, ["good:missing", "no attribute"]),
    ("conform good:CONST --spec delta_rule", 2, ["good:CONST", "not callable"]),
    ("conform nocolon --spec delta_rule", 2, ["nocolon", "MODULE:FUNCTION"]),
    ("conform good:fn", 2, ["--spec"]),
    ("conform good:fn --spec nosuch", 2, ["--spec 'nosuch'", "delta_rule"]),
    ("conform good:fn --spec delta_rule --layout xyz", 2, ["--layout", "xyz"]),
    ("conform good:fn --spec delta_rule --dtype float16", 2, ["--dtype", "float16"]),
    ("conform good:fn --spec delta_rule --vectors {d}/nosuchdir", 2, ["--vectors", "nosuchdir"]),
    ("conform good:fn --spec delta_rule --vectors {d}/empty", 2, ["manifest.json"]),
    ("conform good:fn --spec delta_rule --vectors {d}/vectors --outputs nosuch", 2, ["outputs", "nosuch", "state"]),
    ("conform good:fn --spec delta_rule --vectors {d}/vectors --cases", 2, ["--cases"]),
    # conform: the converter is named, not the kernel
    ("conform good:fn --spec delta_rule --convert bad_syntax:fn", 2, ["--convert 'bad_syntax:fn'", "syntax error"]),
    ("conform good:fn --spec delta_rule --convert nosuchmodule:f", 2, ["--convert 'nosuchmodule:f'"]),
    ("conform good:fn --spec delta_rule --vectors {d}/vectors --convert good:bad_convert", 2,
     ["--convert 'good:bad_convert'", "TypeError", "cannot convert float64"]),
    # conform: a kernel that exits when called is a failed check, not a crash
    ("conform good:exits_when_called --spec delta_rule --vectors {d}/vectors", 1, ["SystemExit", "FAIL"]),
    # the command itself
    ("", 2, ["COMMAND"]),
    ("nosuchcommand", 2, ["nosuchcommand"]),
]


def _run(argv, cwd):
    return subprocess.run([sys.executable, "-m", "refmem", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))


@pytest.fixture(scope="module")
def results(work):
    """Every row of BAD, run two at a time (each is a fresh interpreter)."""
    d, ro = work
    argvs = [cmd.format(d=d, ro=ro).split() for cmd, _, _ in BAD]
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda a: _run(a, d), argvs))


def test_the_table_is_the_size_reported():
    assert len(BAD) == 55


@pytest.mark.parametrize("i", range(len(BAD)), ids=[cmd or "(no command)" for cmd, _, _ in BAD])
def test_bad_invocation(results, i):
    cmd, status, needles = BAD[i]
    proc = results[i]
    everything = proc.stdout + proc.stderr
    assert "Traceback" not in everything, everything
    assert proc.returncode == status, everything
    message = proc.stderr if status == 2 else proc.stdout
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    if status == 2:  # one line, on stderr, before any work printed anything
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == "", everything


def test_version():
    proc = subprocess.run([sys.executable, "-m", "refmem", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"refmem {__version__}"


def _subparsers(parser):
    """``{name: parser}`` of every subcommand, nested ones (``vectors generate``) included."""
    out = {}
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for name, sub in action.choices.items():
            out[name] = sub
            if sub._subparsers:
                out.update({f"{name} {n}": s for n, s in _subparsers(sub).items()})
    return out


def test_every_subcommand_teaches_itself():
    parser = build_parser()
    assert max(len(line) for line in parser.format_help().splitlines()) <= 100
    subs = _subparsers(parser)
    assert {"verify", "list", "backends", "vectors", "vectors generate", "vectors verify", "conform", "bench"} <= set(subs)
    for name, sub in subs.items():
        text = sub.format_help()
        assert sub.description, name
        assert "examples:" in text and f"refmem {name.split()[0]}" in text.split("examples:")[1], name
        assert "exit status: 0 pass, 1 a check failed, 2 a usage error" in text, name
        assert max(len(line) for line in text.splitlines()) <= 100, name


def test_conform_help_lists_specs_layouts_and_gate_names():
    text = _subparsers(build_parser())["conform"].format_help()
    from refmem.memories import MEMORIES

    for name, mem in MEMORIES.items():
        if mem.make_inputs is not None:
            assert f"\n  {name} " in text, name
    assert "fn(q, k, v, **gates, initial_state=M0) -> (o, M_T)" in text
    assert "fn(q, k, v, **gates, initial_state=S0, output_final_state=True) -> (o, S_T)" in text
    # the fla names a kernel receives: g for the forget gate, beta for the step
    gated_delta = next(line for line in text.splitlines() if line.startswith("  gated_delta_rule "))
    assert gated_delta.split("|")[1].split(",")[0].strip() == "g" and "beta" in gated_delta.split("|")[1]


def test_list_shows_every_spec_with_its_kind_forms_vectors_and_file(capsys):
    from pathlib import Path

    from refmem.cli import main
    from refmem.memories import MEMORIES

    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["spec", "kind", "forms", "vectors", "spec", "file"]
    by_name = {}
    for line in lines[2:]:
        by_name.setdefault(line.split()[0], []).append(line)
    for name, mem in MEMORIES.items():
        (line,) = [entry for entry in by_name[name] if "  memory  " in entry]
        assert ("chunked" in line) == (mem.chunked is not None) and ("mini-batch" in line) == (mem.minibatch is not None)
        assert line.rstrip().endswith(f"specs/{name}.md") and "  yes  " in line
    root = Path(__file__).resolve().parents[1]
    shown = {line.split()[-1] for entries in by_name.values() for line in entries}
    for spec_file in (root / "specs").glob("*.md"):
        if spec_file.stem not in ("README", "MATH"):
            assert f"specs/{spec_file.name}" in shown, spec_file.name
    assert all((root / f).is_file() for f in shown if f != "-")
    assert main(["list", "--kind", "memory"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2 + len(MEMORIES)


def test_a_write_that_fails_at_the_end_is_one_line(monkeypatch, capsys):
    """--json is checked before the run; a write that still fails at the end (disk full) is one line, exit 1."""
    import refmem.verify
    from refmem.cli import main

    def disk_full(args, client=None):
        raise OSError(28, "No space left on device", "rows.json")

    monkeypatch.setattr(refmem.verify, "main", disk_full)
    assert main(["verify", "--spec", "l2"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "refmem verify: error: No space left on device: 'rows.json'"


def test_readme_shows_the_tables_the_commands_print():
    """The tables README's tour shows have the columns the code prints (docs that cannot drift silently)."""
    import re
    from pathlib import Path

    from refmem.bench import format_table as bench_table
    from refmem.catalog import format_catalog
    from refmem.verify import format_table as verify_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    shown = {tuple(re.split(r"\s{2,}", line.strip())) for line in readme.splitlines()}
    for table in (verify_table([]), format_catalog([]), bench_table([])):
        head = tuple(re.split(r"\s{2,}", table.splitlines()[0].strip()))
        assert head in shown, head
    for column in ("workers", "head-tok/s", "x recur", "GFLOP/s", "% peak", "% 1-core", "% small", "peak extra", "/BHTd"):
        assert f"`{column}`" in readme, column  # every bench column is explained by name
