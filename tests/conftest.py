"""Test-suite plumbing shared by every tox env.

* Tests under ``tests/torch``, ``tests/mxnet`` and ``tests/interop`` get the
  matching marker automatically; any other test that needs a framework marks
  itself (``@pytest.mark.torch``) and skips with ``pytest.importorskip``.
* ``--require-framework NAME`` (used by the tox envs) turns a skip into a failure
  where it would hide a broken env: ``pytest.importorskip`` of the required
  framework's modules (``torch``; ``mxnet``; both for ``interop``; for any other NAME,
  the module NAME) imports them outright and fails with the import error instead of
  skipping; and the run fails when no test carrying marker NAME passed. An env whose
  framework failed to import would otherwise go green having tested nothing.
  ``tests/test_require_framework.py`` runs pytest on test files
  that import a missing module to check both.
* ``run_readme_block`` runs a fenced ``python`` block of README.md as written
  (tests/torch/test_readme_torch.py, tests/mxnet/test_readme_mxnet.py;
  tests/test_readme.py checks that no other block goes untested).
"""

from __future__ import annotations

import importlib
import pathlib
import re
from typing import Any

import pytest

_FRAMEWORK_DIRS = ("torch", "mxnet", "interop")
#: The top-level modules each required framework name stands for.
_FRAMEWORK_MODULES = {"torch": ("torch",), "mxnet": ("mxnet",), "interop": ("torch", "mxnet")}
_passed_by_marker: dict[str, int] = {}
_original_importorskip = pytest.importorskip


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-framework",
        action="append",
        default=[],
        metavar="NAME",
        help="fail, not skip, where NAME's modules do not import, and fail the run unless at least "
        "one test marked NAME passed (torch, mxnet, interop)",
    )


def _strict_importorskip(required: dict[str, str]):
    """``pytest.importorskip`` that fails for the modules of a required framework."""

    def importorskip(modname: str, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        framework = required.get(modname.partition(".")[0])
        if framework is None:
            return _original_importorskip(modname, *args, **kwargs)
        problem = None
        try:
            importlib.import_module(modname)
        except Exception as exc:  # any failure: a broken install must not pass as a skip
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:  # failed outside the except block, so the report shows one error
            pytest.fail(
                f"--require-framework {framework}: {modname!r} does not import ({problem}); "
                "a required framework's tests must not be skipped",
                pytrace=False,
            )
        return _original_importorskip(modname, *args, **kwargs)  # minversion and the like

    return importorskip


def pytest_configure(config: pytest.Config) -> None:
    required = {
        module: name
        for name in config.getoption("--require-framework")
        for module in _FRAMEWORK_MODULES.get(name, (name,))
    }
    if required:
        pytest.importorskip = _strict_importorskip(required)


def pytest_unconfigure(config: pytest.Config) -> None:
    pytest.importorskip = _original_importorskip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_root = pathlib.Path(__file__).parent
    for item in items:
        try:
            rel = pathlib.Path(str(item.fspath)).relative_to(tests_root)
        except ValueError:
            continue
        if rel.parts and rel.parts[0] in _FRAMEWORK_DIRS:
            item.add_marker(getattr(pytest.mark, rel.parts[0]))


def readme_python_blocks() -> dict[str, list[str]]:
    """The fenced ``python`` blocks of README.md, by the ``## `` heading of their section."""
    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    blocks: dict[str, list[str]] = {}
    for section in re.finditer(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, re.S | re.M):
        found = re.findall(r"^```python\n(.*?)^```", section.group(2), re.S | re.M)
        if found:
            blocks[section.group(1).strip()] = found
    return blocks


@pytest.fixture
def readme_blocks() -> dict[str, list[str]]:
    """:func:`readme_python_blocks` as a fixture."""
    return readme_python_blocks()


@pytest.fixture
def run_readme_block(capsys: pytest.CaptureFixture[str]):
    """Run the one ``python`` block of README.md's section ``heading`` as written.

    Returns the namespace the block leaves behind and what it printed, for the test to check.
    """

    def run(heading: str) -> tuple[dict[str, Any], str]:
        blocks = readme_python_blocks()
        assert len(blocks.get(heading, [])) == 1, f"README.md: one python block under '## {heading}'"
        namespace: dict[str, Any] = {"__name__": "__readme__"}
        exec(compile(blocks[heading][0], f"README.md ({heading})", "exec"), namespace)
        return namespace, capsys.readouterr().out

    return run


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed:
        for name in report.keywords:
            _passed_by_marker[name] = _passed_by_marker.get(name, 0) + 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    required = session.config.getoption("--require-framework")
    missing = [name for name in required if not _passed_by_marker.get(name)]
    if missing:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"ERROR: --require-framework: no passing test for {', '.join(missing)} "
                "(is the framework installed in this env?)",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


try:  # hypothesis profiles: CI runs more examples, without deadlines (2 shared cores)
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.register_profile("dev", max_examples=50, deadline=None)
    import os

    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
except ImportError:  # pragma: no cover - hypothesis is in every tox env
    pass
