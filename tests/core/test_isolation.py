"""coreprune must never import a framework, so that it runs anywhere NumPy does."""

import subprocess
import sys

import pytest

# Every module the core ships; the adapters (coreprune.torch / coreprune.mxnet) are the only
# subpackages allowed to import a framework, and only when they themselves are imported.
MODULES = ["coreprune", "coreprune.cli", "coreprune.io", "coreprune.load_report"]


@pytest.mark.parametrize("module", MODULES)
def test_import_pulls_in_no_framework(module, tmp_path):
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mxnet'))\n"
        "print(','.join(bad))\n"
    )
    # cwd outside the source tree: `python -c` puts the cwd first on sys.path.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing {module} loaded {out.stdout.strip()}"
