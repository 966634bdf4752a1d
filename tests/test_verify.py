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
