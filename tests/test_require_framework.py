"""``--require-framework``: a required framework that does not import fails the run instead of skipping.

pytest runs, in a subprocess, on small test files next to a copy of tests/conftest.py; the
"framework" is a module name that exists nowhere, so the check runs in every env.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

MISSING = "coreprune_no_such_framework"

FILES = {
    "test_module_level.py": f"""
import pytest
pytest.importorskip("{MISSING}", reason="needs it")

def test_never_collected():
    pass
""",
    "test_in_test.py": f"""
import pytest

@pytest.mark.{MISSING}
def test_passes():
    pass

def test_imports_inside():
    pytest.importorskip("{MISSING}.sub")

def test_other_module_still_skips():
    pytest.importorskip("coreprune_another_missing_module")
""",
}


def _run(tmp_path: pathlib.Path, files: dict[str, str], *options: str) -> subprocess.CompletedProcess:
    shutil.copy(pathlib.Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-W", "ignore", *options],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_the_option_a_missing_module_is_a_skip(tmp_path):
    run = _run(tmp_path, FILES)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed, 3 skipped" in run.stdout
    assert "SKIPPED [1] test_module_level.py" in run.stdout


def test_with_the_option_the_same_skips_fail_naming_the_import_error(tmp_path):
    run = _run(tmp_path, FILES, "--require-framework", MISSING, "--continue-on-collection-errors")
    assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.stdout + run.stderr
    out = run.stdout
    assert "ERROR test_module_level.py" in out and "FAILED test_in_test.py::test_imports_inside" in out
    message = f"--require-framework {MISSING}: '{MISSING}{{}}' does not import (ModuleNotFoundError"
    assert message.format("") in out and message.format(".sub") in out
    # Only the required framework's modules are strict; the marked test still passes.
    assert "SKIPPED [1] test_in_test.py" in out and "PASSED test_in_test.py::test_passes" in out
    assert "no passing test for" not in out


def test_with_the_option_a_run_where_nothing_marked_passed_fails(tmp_path):
    files = {"test_plain.py": "def test_unmarked():\n    pass\n"}
    run = _run(tmp_path, files, "--require-framework", MISSING)
    assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.stdout + run.stderr
    assert f"no passing test for {MISSING}" in run.stdout
    assert "1 passed" in run.stdout


def test_a_required_framework_that_imports_runs_normally(tmp_path):
    files = {
        "test_ok.py": "import pytest\njson = pytest.importorskip('json')\n\n"
        "@pytest.mark.json\ndef test_ok():\n    assert json.loads('1') == 1\n"
    }
    run = _run(tmp_path, files, "--require-framework", "json")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
