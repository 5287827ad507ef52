"""coreprune must never import a framework, so that it runs anywhere NumPy does."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["coreprune", "coreprune.cli", "coreprune.io", "adapters"])
def test_import_pulls_in_no_framework(module):
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mxnet'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0 and "No module named" in out.stderr and module != "coreprune":
        pytest.skip(f"{module} not built yet: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing {module} loaded {out.stdout.strip()}"
