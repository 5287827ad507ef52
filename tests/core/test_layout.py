"""The installed package is the source tree's: every module ships, under coreprune's own name only.

The adapters live in the top-level ``adapters/`` folder and install as ``coreprune.torch`` and
``coreprune.mxnet``; ``pyproject.toml`` lists the packages explicitly, so a new subpackage that is
not listed would silently be missing from the wheel. These tests catch that.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pathlib

import pytest

import coreprune

ROOT = pathlib.Path(__file__).resolve().parents[2]
INSTALLED = pathlib.Path(coreprune.__file__).resolve().parent


def _installed(package: str) -> pathlib.Path:
    """Where the import system finds ``package`` (site-packages, or the source for an editable install)."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None, f"{package} is not installed"
    return pathlib.Path(spec.origin).resolve().parent


# Source folder -> the package it installs as.
SOURCES = {
    ROOT / "coreprune": "coreprune",
    ROOT / "adapters" / "torch": "coreprune.torch",
    ROOT / "adapters" / "mxnet": "coreprune.mxnet",
}


def _modules(folder: pathlib.Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*.py") if "__pycache__" not in p.parts}


@pytest.mark.parametrize("source", list(SOURCES), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_source_module_is_installed(source):
    installed = _installed(SOURCES[source])
    missing = sorted(_modules(source) - _modules(installed))
    assert not missing, f"in {source} but not installed under {installed}: {missing}"


def test_adapters_folder_holds_only_the_two_framework_packages():
    entries = sorted(p.name for p in (ROOT / "adapters").iterdir() if p.name != "__pycache__")
    assert entries == ["mxnet", "torch"], entries
    assert not (ROOT / "adapters" / "__init__.py").exists()


def test_no_top_level_adapters_package_installed():
    # `python -m pytest` puts the repository on sys.path, where adapters/ is a namespace folder
    # without __init__.py; anything else named `adapters` would be a package that was installed.
    spec = importlib.util.find_spec("adapters")
    if spec is not None:
        locations = [pathlib.Path(p).resolve() for p in spec.submodule_search_locations or []]
        assert spec.origin is None and locations == [ROOT / "adapters"], spec
    if INSTALLED.parent.name in ("site-packages", "dist-packages"):  # a wheel install: its RECORD
        files = importlib.metadata.files("coreprune") or []
        tops = {f.parts[0] for f in files if not f.parts[0].endswith(".dist-info") and f.parts[0] != ".."}
        assert tops == {"coreprune"}, tops


@pytest.mark.skipif(
    not os.environ.get("COREPRUNE_TEST_INSTALLED"),
    reason="only under tox, where the tests must run against the installed wheel",
)
def test_tests_run_against_the_installed_wheel():
    assert INSTALLED != ROOT / "coreprune", f"coreprune imported from the source tree: {INSTALLED}"
    assert INSTALLED.parent.name in ("site-packages", "dist-packages"), INSTALLED
