"""The backend registry: discovery through entry points, use/backend, and clear errors."""

import importlib.metadata
import subprocess
import sys

import pytest

import refmem
from refmem import backends


def test_builtin_backends_are_listed_and_usable():
    rows = {r["name"]: r for r in refmem.available_backends()}
    assert rows["numpy"]["usable"] and rows["array_api_strict"]["usable"]


def test_builtins_come_from_the_entry_point_group():
    names = {ep.name for ep in importlib.metadata.entry_points(group=backends.ENTRY_POINT_GROUP)}
    assert {"numpy", "array_api_strict"} <= names


def test_use_and_context_manager():
    import array_api_strict

    assert backends.current_name() == "numpy"
    with refmem.backend("array_api_strict") as xp:
        assert xp is array_api_strict and backends.current_name() == "array_api_strict"
        refmem.use("numpy")  # use() inside the block is undone when the block ends
    assert backends.current_name() == "numpy"
    refmem.use("array_api_strict")
    try:
        assert backends.current_namespace() is array_api_strict
    finally:
        refmem.use("numpy")


def test_unknown_backend_lists_usable_ones():
    with pytest.raises(refmem.BackendError, match=r"unknown backend 'no-such-library'.*usable backends: .*numpy"):
        refmem.use("no-such-library")


def test_unusable_backend_says_why():
    broken = backends.Backend("broken", lambda: None, lambda: (False, "no device found"), "test")
    backends.register(broken)
    try:
        with pytest.raises(refmem.BackendError, match="'broken' is not usable: no device found"):
            refmem.use("broken")
        row = [r for r in refmem.available_backends() if r["name"] == "broken"][0]
        assert row == {"name": "broken", "usable": False, "reason": "no device found", "description": "test"}
    finally:
        backends._discover().pop("broken")


def test_namespace_of_rejects_mixed_libraries():
    import array_api_strict
    import numpy as np

    with pytest.raises(TypeError, match="one array library"):
        backends.namespace_of(np.zeros(2), array_api_strict.zeros(2))


def test_refmem_never_imports_cupy():
    code = "import sys, refmem, refmem.cli, refmem.verify, refmem.memories; " \
           "refmem.available_backends(); print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # refmem_cupy's probe may import cupy when it is installed; refmem itself must not
    import importlib.util

    if importlib.util.find_spec("cupy") is None:
        assert out.strip() == "False"


def test_backends_cli_lists_every_backend():
    out = subprocess.run([sys.executable, "-m", "refmem", "backends"], capture_output=True, text=True, check=True).stdout
    assert "numpy" in out and "array_api_strict" in out and "usable" in out
