"""Test-suite plumbing shared by every tox env.

* Tests under ``tests/torch``, ``tests/mxnet`` and ``tests/interop`` get the
  matching marker automatically; any other test that needs a framework marks
  itself (``@pytest.mark.torch``) and skips with ``pytest.importorskip``.
* ``--require-framework NAME`` (used by the tox envs) makes the run fail when no
  test carrying marker NAME passed: an env whose framework silently failed to
  import would otherwise go green having tested nothing.
"""

from __future__ import annotations

import pathlib

import pytest

_FRAMEWORK_DIRS = ("torch", "mxnet", "interop")
_passed_by_marker: dict[str, int] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-framework",
        action="append",
        default=[],
        metavar="NAME",
        help="fail the run unless at least one test marked NAME passed (torch, mxnet, interop)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_root = pathlib.Path(__file__).parent
    for item in items:
        try:
            rel = pathlib.Path(str(item.fspath)).relative_to(tests_root)
        except ValueError:
            continue
        if rel.parts and rel.parts[0] in _FRAMEWORK_DIRS:
            item.add_marker(getattr(pytest.mark, rel.parts[0]))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed:
        for name in _FRAMEWORK_DIRS:
            if name in report.keywords:
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
