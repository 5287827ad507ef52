"""The installed package is the source tree's: every module ships, under coreprune's own name only.

The adapters live in the top-level ``adapters/`` folder and install as ``coreprune.torch`` and
``coreprune.mxnet``; ``pyproject.toml`` lists the packages explicitly, so a new subpackage that is
not listed would silently be missing from the wheel. These tests catch that.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

import pytest

import coreprune

ROOT = pathlib.Path(__file__).resolve().parents[2]
INSTALLED = pathlib.Path(coreprune.__file__).resolve().parent
# Source folder -> installed package folder.
SOURCES = {
    ROOT / "coreprune": INSTALLED,
    ROOT / "adapters" / "torch": INSTALLED / "torch",
    ROOT / "adapters" / "mxnet": INSTALLED / "mxnet",
}


def _modules(folder: pathlib.Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*.py") if "__pycache__" not in p.parts}


@pytest.mark.parametrize("source", list(SOURCES), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_source_module_is_installed(source):
    installed = SOURCES[source]
    missing = sorted(_modules(source) - _modules(installed))
    assert not missing, f"in {source} but not installed under {installed}: {missing}"


def test_adapters_folder_holds_only_the_two_framework_packages():
    entries = sorted(p.name for p in (ROOT / "adapters").iterdir() if p.name != "__pycache__")
    assert entries == ["mxnet", "torch"], entries
    assert not (ROOT / "adapters" / "__init__.py").exists()


def test_no_top_level_adapters_package_installed():
    assert importlib.util.find_spec("adapters") is None


@pytest.mark.skipif(
    not os.environ.get("COREPRUNE_TEST_INSTALLED"),
    reason="only under tox, where the tests must run against the installed wheel",
)
def test_tests_run_against_the_installed_wheel():
    assert INSTALLED != ROOT / "coreprune", f"coreprune imported from the source tree: {INSTALLED}"
    assert INSTALLED.parent.name in ("site-packages", "dist-packages"), INSTALLED
