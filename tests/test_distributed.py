"""Dask (refmem.distributed): the (batch, head) slices and the independent tasks on a two-worker LocalCluster give
outputs bitwise equal to the in-process run and vector files byte-identical to a serial run; bad clients and dead
scheduler addresses get one clear error. One cluster for the whole module (starting one costs seconds)."""

import os
import subprocess
import sys

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="dask[distributed] is in the test extra")

from refmem import vectors as V  # noqa: E402
from refmem.cli import main  # noqa: E402
from refmem.distributed import check_client, connect, heads_on_cluster, map_on_cluster  # noqa: E402
from refmem.memories import MEMORIES  # noqa: E402
from refmem.parallel import heads_in_parallel  # noqa: E402
from refmem.verify import run_checks  # noqa: E402
from conftest import files_by_path

DEAD = "tcp://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    c = distributed.Client(cluster, set_as_default=False)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


CASES = [("gated_delta_rule", "chunked"), ("gated_delta_rule", "recurrent"), ("delta_rule", "chunked"),
         ("titans", "minibatch"), ("mesa", "chunked")]


@pytest.mark.parametrize("name, form", CASES)
def test_slices_on_the_cluster_equal_the_in_process_pool(client, name, form):
    spec = MEMORIES[name]
    fn = spec.recurrent if form == "recurrent" else getattr(spec, form)
    kw = {} if form == "recurrent" else {"chunk_size": 8}
    inputs = spec.make_inputs(7, (2, 3), 21, 5, 4, np, "float64")
    local = heads_in_parallel(fn, workers=1, **inputs, **kw)
    remote = heads_on_cluster(fn, client=client, **inputs, **kw)
    local, remote = (x if isinstance(x, tuple) else (x,) for x in (local, remote))
    assert len(local) == len(remote)
    for a, b in zip(local, remote):
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert type(y) is np.ndarray and x.shape == y.shape
            assert np.array_equal(x, y)  # bitwise, not approximately
    # and, independently of the slicing code, the same problem as one call on the whole batch (to rounding:
    # a gate path chosen on the whole batch may differ in the last bits; 1e-12 relative is ~4500 eps)
    whole = fn(**inputs, **kw)
    whole = whole if isinstance(whole, tuple) else (whole,)
    np.testing.assert_allclose(remote[0], whole[0], rtol=1e-12, atol=1e-12 * float(np.max(np.abs(whole[0]))))


def test_inputs_without_leading_axes_run_as_one_task(client):
    spec = MEMORIES["delta_rule"]
    inputs = spec.make_inputs(8, (), 12, 4, 4, np, "float64")
    local = spec.chunked(**inputs, chunk_size=4)
    remote = heads_on_cluster(spec.chunked, client=client, **inputs, chunk_size=4)
    for a, b in zip(local, remote):
        assert np.array_equal(a, b)


def test_vectors_generated_on_the_cluster_are_byte_identical(client, tmp_path, capsys):
    specs = ["gated_delta_rule", "mesa", "cms"]  # a gated memory, a tuple state, a flat-convention reference
    V.generate(str(tmp_path / "serial"), specs)
    argv = ["vectors", "generate", "--out", str(tmp_path / "cluster"), "--scheduler", client.scheduler.address]
    assert main(argv + [a for s in specs for a in ("--spec", s)]) == 0
    serial, cluster = files_by_path(tmp_path / "serial"), files_by_path(tmp_path / "cluster")
    assert sorted(serial) == sorted(cluster) and len(serial) > 10
    assert all(serial[n] == cluster[n] for n in serial)


def test_verify_on_the_cluster_gives_the_serial_rows(client):
    specs = ["l2", "delta_rule", "titans"]
    serial = run_checks("numpy", spec_filter=specs)
    remote = run_checks("numpy", spec_filter=specs, client=client)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert len(serial) >= 3 and strip(remote) == strip(serial)


def test_tasks_in_order_and_errors_raised_here(client):
    import math

    assert map_on_cluster(math.sqrt, [9.0, 4.0, 1.0], client=client) == [3.0, 2.0, 1.0]
    with pytest.raises(ValueError, match="math domain error"):
        map_on_cluster(math.sqrt, [4.0, -1.0], client=client)


def test_bench_on_the_cluster(client):
    from refmem.bench import run_bench

    rows = run_bench(["delta_rule"], batch=1, seq_len=16, heads=2, dim=4, chunk=8, dtypes=("float64",), repeat=1,
                     peak_size=64, client=client)
    assert [r["form"] for r in rows] == ["recurrent", "chunked", "minibatch"][: len(rows)]
    assert all(r["scheduler"] == client.scheduler.address and r["peak_extra_bytes"] is None for r in rows)


def test_cli_bench_on_the_cluster(client, capsys):
    argv = ["bench", "--memory", "delta_rule", "--seq-len", "16", "--heads", "2", "--dim", "4", "--chunk", "8",
            "--dtype", "float64", "--repeat", "1", "--peak-size", "32", "--scheduler", client.scheduler.address]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"on the cluster at {client.scheduler.address}" in out and "delta_rule" in out


@pytest.mark.parametrize("bad", [None, "tcp://127.0.0.1:8786", object(), 3])
def test_a_client_of_the_wrong_type_is_a_type_error(bad, tmp_path):
    spec = MEMORIES["delta_rule"]
    inputs = spec.make_inputs(0, (2,), 4, 2, 2, np, "float64")
    with pytest.raises(TypeError, match="client must be a dask.distributed.Client"):
        heads_on_cluster(spec.recurrent, client=bad, **inputs)
    if bad is not None:  # client=None is the default of the pool: no cluster
        with pytest.raises(TypeError, match="client must be a dask.distributed.Client"):
            V.generate(str(tmp_path), ["delta_rule"], client=bad)
        assert not os.listdir(tmp_path)  # refused before any work


def test_a_closed_client_is_named(client):
    closed = distributed.Client(client.scheduler.address, set_as_default=False)
    closed.close()
    with pytest.raises(ValueError, match="client is not connected"):
        check_client(closed)


def test_a_dead_scheduler_is_one_value_error():
    with pytest.raises(ValueError, match="no Dask scheduler at 'tcp://127.0.0.1:9'"):
        connect(DEAD, timeout=1)
    with pytest.raises(ValueError, match="no Dask scheduler at 'no-port'"):
        connect("no-port", timeout=1)
    with pytest.raises(TypeError, match="address"):
        connect(None)


@pytest.mark.parametrize("argv", [["vectors", "generate", "--out", "{tmp}", "--scheduler", DEAD],
                                  ["bench", "--memory", "delta_rule", "--seq-len", "8", "--scheduler", DEAD],
                                  ["verify", "--spec", "l2", "--scheduler", DEAD]])
def test_cli_dead_scheduler_is_one_line_exit_2(argv, tmp_path, capsys):
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--scheduler" in err and "no Dask scheduler at" in err


def test_cli_workers_and_scheduler_exclude_each_other(tmp_path, capsys):
    assert main(["vectors", "generate", "--out", str(tmp_path), "--workers", "2", "--scheduler", DEAD]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_refmem_never_imports_dask_at_import_time():
    code = ("import sys, refmem, refmem.cli, refmem.pool, refmem.verify, refmem.vectors, refmem.bench, "
            "refmem.distributed; bad = sorted(m for m in ('dask', 'distributed') if m in sys.modules); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cupy_slices_on_gpu_workers(client):
    from refmem_cupy import availability

    usable, reason = availability.probe()
    if not usable:
        pytest.skip(f"cupy backend not usable: {reason}")
    import cupy

    spec = MEMORIES["gated_delta_rule"]
    inputs = spec.make_inputs(9, (2, 2), 33, 8, 8, np, "float64")
    on_gpu = {k: cupy.asarray(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}
    remote = heads_on_cluster(spec.chunked, client=client, **on_gpu, chunk_size=16)
    local = [spec.chunked(**{k: v[b, h] if isinstance(v, cupy.ndarray) else v for k, v in on_gpu.items()},
                          chunk_size=16) for b in range(2) for h in range(2)]
    assert isinstance(remote[0], cupy.ndarray)
    for j in range(len(remote)):
        want = cupy.stack([r[j] for r in local]).reshape(remote[j].shape)
        assert bool(cupy.all(remote[j] == want))  # each GPU slice computed by the same code: bitwise equal


def test_without_dask_the_cli_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now raises ImportError
    assert main(["vectors", "generate", "--out", str(tmp_path), "--scheduler", DEAD]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'refmem[dask]'" in err
    with pytest.raises(TypeError, match="client must be a dask.distributed.Client"):
        check_client(object())


def test_blocks_keep_their_array_namespace_on_the_cluster(client):
    """The cluster path converts nothing: array_api_strict inputs are cut, sent, computed and stacked as
    array_api_strict arrays (as CuPy inputs stay CuPy on GPU workers), and equal one call on the whole batch."""
    import array_api_strict as xps
    from array_api_strict._array_object import Array

    spec = MEMORIES["gated_delta_rule"]
    inputs = spec.make_inputs(12, (2, 2), 13, 4, 3, xps, "float64")
    assert all(type(x) is Array for x in inputs.values() if hasattr(x, "shape"))
    seen = client.gather(client.map(_namespace_of_block, [inputs["q"][0, 0, ...], inputs["q"][1, 1, ...]], pure=False))
    assert seen == ["array_api_strict", "array_api_strict"]  # on the workers, not converted on the way
    remote = heads_on_cluster(spec.chunked, client=client, **inputs, chunk_size=4)
    whole = spec.chunked(**inputs, chunk_size=4)
    for r, w in zip(remote, whole):
        assert type(r) is Array and r.shape == w.shape and r.dtype == xps.float64
        a, b = np.asarray(r), np.asarray(w)  # to rounding (a gate path chosen on the whole batch; ~4500 eps)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * float(np.max(np.abs(b))))


def _namespace_of_block(x):
    """On a worker: the name of the array namespace of what it received."""
    from array_api_compat import array_namespace

    return array_namespace(x).__name__
