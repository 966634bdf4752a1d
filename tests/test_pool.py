"""The pool of independent tasks (refmem.pool) driving ``refmem verify`` and ``refmem vectors generate``: results in
order, every task pinned to one BLAS thread, identical rows and byte-identical vector files for every ``workers``."""

import math
import os

import pytest

from refmem import vectors as V
from refmem.cli import main
from refmem.pool import run_tasks
from refmem.validation import get_option
from refmem.verify import run_checks
from conftest import files_by_path


def _probe(i):
    """What a task sees where it runs: its item, the BLAS thread counts, refmem's workers option, its process."""
    from threadpoolctl import threadpool_info

    blas = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    return i, blas, get_option("workers"), os.getpid()


@pytest.mark.parametrize("workers", [1, 2])
def test_results_in_order_and_every_task_pinned(workers):
    out = run_tasks(_probe, range(5), workers=workers)
    assert [o[0] for o in out] == [0, 1, 2, 3, 4]
    assert all(o[1] and set(o[1]) == {1} for o in out)  # one BLAS thread in every task
    assert all(o[2] == 1 for o in out)  # no heads-in-parallel pool inside a task
    pids = {o[3] for o in out}
    assert (pids == {os.getpid()}) if workers == 1 else (os.getpid() not in pids)


def test_a_task_that_raises_raises_here():
    with pytest.raises(ValueError, match="math domain error"):
        run_tasks(math.sqrt, [4.0, -1.0, 9.0], workers=2)


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_bad_workers_named(workers):
    with pytest.raises(ValueError, match="workers"):
        run_tasks(math.sqrt, [4.0], workers=workers)
    with pytest.raises(ValueError, match="workers"):
        run_checks("numpy", spec_filter=["l2"], workers=workers)


def test_cli_bad_workers_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["verify", "--workers", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--workers" in err


def _without_time(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_verify_rows_identical_for_two_workers():
    specs = ["l2", "delta_rule", "titans", "chunked_gated_delta_rule"]
    serial = run_checks("numpy", spec_filter=[s for s in specs if s in {c.spec for c in _checks()}])
    pooled = run_checks("numpy", spec_filter=[r["spec"] for r in serial], workers=2)
    assert len(serial) >= 5
    assert _without_time(pooled) == _without_time(serial)  # every error equal to the last bit


def _checks():
    from refmem.checks import CHECKS

    return CHECKS


def test_cli_vectors_generate_with_two_workers_is_byte_identical(tmp_path, capsys):
    specs = ["delta_rule", "titans"]
    V.generate(str(tmp_path / "serial"), specs)
    argv = ["vectors", "generate", "--out", str(tmp_path / "pooled"), "--workers", "2"]
    assert main(argv + [a for s in specs for a in ("--spec", s)]) == 0
    serial, pooled = files_by_path(tmp_path / "serial"), files_by_path(tmp_path / "pooled")
    assert sorted(serial) == sorted(pooled) and len(serial) > 10
    assert all(serial[n] == pooled[n] for n in serial)
