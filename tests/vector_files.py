"""Fixtures and helpers shared by the vector-set tests: a generated set per test module, a private copy to damage.

A test module that imports ``generated`` and ``copy`` defines ``SPECS``, the specs its set holds.
"""

import json
import os
import shutil

import pytest

from refmem import vectors as V


@pytest.fixture(scope="module")
def generated(tmp_path_factory, request):
    """The vectors of the importing module's ``SPECS``, generated once per module."""
    d = tmp_path_factory.mktemp("vectors")
    V.generate(str(d), request.module.SPECS)
    return str(d)


@pytest.fixture
def copy(generated, tmp_path):
    """A private copy to damage."""
    d = tmp_path / "v"
    shutil.copytree(generated, d)
    return str(d)


def read_manifest(d):
    with open(os.path.join(d, V.MANIFEST)) as fh:
        return json.load(fh)


def write_manifest(d, m):
    with open(os.path.join(d, V.MANIFEST), "w") as fh:
        json.dump(m, fh)
