"""``refmem verify``: every registered check passes on the CPU backends, and the JSON has the promised fields."""

import json
import subprocess
import sys

import pytest

from refmem.checks import register_check
from refmem.verify import format_table, run_checks


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict"])
def test_every_registered_check_passes(backend):
    rows = run_checks(backend)
    failing = [(r["spec"], r["check"], r["max_error"], r["tolerance"], r["error"]) for r in rows if r["status"] != "pass"]
    assert rows and not failing


def test_a_failing_check_fails_the_run(tmp_path):
    @register_check("test-only", "always wrong", 1e-10)
    def wrong(xp):
        return 1.0

    @register_check("test-only", "crashes", 1e-10)
    def crash(xp):
        raise RuntimeError("boom")

    from refmem import checks

    try:
        rows = run_checks("numpy", spec_filter=["test-only"])
        assert [r["status"] for r in rows] == ["fail", "fail"]
        assert "RuntimeError: boom" in rows[1]["error"]
        assert "0 passed, 2 failed" in format_table(rows)
    finally:
        checks.CHECKS[:] = [c for c in checks.CHECKS if c.spec != "test-only"]


def test_cli_json_and_exit_status(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "refmem", "verify", "--spec", "l2", "--json", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())
    assert rows and all({"spec", "check", "max_error", "tolerance", "status", "seconds"} <= set(r) for r in rows)
    assert all(r["status"] == "pass" for r in rows)
    assert "spec" in proc.stdout and "tolerance" in proc.stdout


def test_cli_unknown_backend_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "refmem", "verify", "--backend", "nonesuch"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown backend 'nonesuch'" in proc.stderr


def test_spec_filter_matches_exactly():
    # delta_rule is a substring of gated_delta_rule: only the exact name may run
    rows = run_checks("numpy", spec_filter=["delta_rule"])
    assert rows and {r["spec"] for r in rows} == {"delta_rule"}


def test_unknown_spec_names_the_known_ones():
    with pytest.raises(ValueError, match=r"spec_filter \['nosuch'\]: no such spec; known: .*delta_rule"):
        run_checks("numpy", spec_filter=["nosuch"])


def test_table_fits_100_columns_and_json_keeps_full_names():
    long = {"spec": "a_spec_name_much_longer_than_any_registered_" * 2, "check": "a check name " * 12,
            "max_error": 1.25e-13, "tolerance": 1e-10, "status": "fail", "seconds": 12.5,
            "error": "ValueError: " + "a long message " * 20}
    short = {**long, "spec": "l2", "check": "closed == iterative", "status": "pass", "error": ""}
    text = format_table([long, short])
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "~" in text.splitlines()[2]  # the cut is marked
    assert "l2" in text and "closed == iterative" in text and "1 passed, 1 failed" in text
    # the real table fits too
    rows = run_checks("numpy", spec_filter=["l2", "titans"])
    assert max(len(line) for line in format_table(rows).splitlines()) <= 100
