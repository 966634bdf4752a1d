"""``refmem tour``: every stop runs, each of its checks agrees within its stated tolerance; the CLI options.

The tour computes nothing itself: each stop runs registered checks (closed form
against an iterative solver, recurrent against chunked). These tests confirm
that every stop selects checks, that every selected check agrees within the
tolerance it states, and that ``--list``, ``--stop`` and an unknown stop behave
as documented (an unknown stop: one line on stderr, exit 2).
"""

import subprocess
import sys

import pytest

from refmem import tour
from refmem.checks import CHECKS


@pytest.mark.parametrize("stop", tour.STOPS, ids=lambda s: s.name)
def test_every_stop_agrees_within_its_tolerance(stop):
    rows = tour.run_stop(stop)
    assert len(rows) >= len(stop.checks)  # every (spec, text) pair selected at least one check
    for r in rows:
        assert r["error"] == "", r
        assert r["tolerance"] is not None and r["tolerance"] <= 1e-6, r  # a sane ceiling: the tour shows agreement
        assert r["max_error"] <= r["tolerance"], r
        assert r["ok"], r


def test_each_pair_selects_registered_checks_of_its_spec():
    for stop in tour.STOPS:
        selected = tour.stop_checks(stop)
        for spec, text in stop.checks:
            assert any(c.spec == spec and text in c.name for c in selected), (stop.name, spec, text)
        assert all(c in CHECKS for c in selected)


def test_a_pair_that_selects_nothing_is_an_error():
    bad = tour.Stop("bad", "t", "e", "c", (("delta_rule", "no check has this name"),))
    with pytest.raises(LookupError, match="no check has this name"):
        tour.stop_checks(bad)


def test_stops_follow_the_paper_order():
    names = tour.stop_names()
    for earlier, later in [("mlp", "momentum"), ("momentum", "linear_attention"), ("delta_rule", "longhorn"),
                           ("titans", "retention"), ("retention", "adam"), ("muon", "nested")]:
        assert names.index(earlier) < names.index(later)


def test_get_stop_names_the_unknown():
    with pytest.raises(ValueError, match="'nosuch'.*known: mlp"):
        tour.get_stop("nosuch")


def _refmem(*argv):
    return subprocess.run([sys.executable, "-m", "refmem", *argv], capture_output=True, text=True, timeout=300)


def test_cli_list_names_every_stop():
    p = _refmem("tour", "--list")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert [line.split()[0] for line in lines] == tour.stop_names()


def test_cli_one_stop_prints_equation_call_and_agreement():
    p = _refmem("tour", "--stop", "longhorn")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "longhorn" in out and "equation:" in out and "refmem:  refmem.memories.longhorn" in out
    assert "Sherman-Morrison" in out
    assert "agree" in out and "DISAGREE" not in out
    assert "1 stop(s), 0 disagreement(s)" in out
    assert "[6/" not in out  # only the stop asked for


def test_cli_unknown_stop_is_one_line_exit_2():
    p = _refmem("tour", "--stop", "nosuch")
    assert p.returncode == 2
    assert p.stdout == ""
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "--stop 'nosuch'" in lines[0] and "known:" in lines[0] and "longhorn" in lines[0]


def test_every_refmem_name_a_stop_prints_exists():
    import importlib
    import re

    for stop in tour.STOPS:
        names = re.findall(r"refmem(?:\.\w+)+", stop.call)
        assert names, stop.name
        for dotted in names:
            parts = dotted.split(".")
            obj, i = None, len(parts)
            while i > 0:  # the longest importable prefix, then attributes
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                    break
                except ModuleNotFoundError:
                    i -= 1
            for attr in parts[i:]:
                assert hasattr(obj, attr), (stop.name, dotted)
                obj = getattr(obj, attr)
