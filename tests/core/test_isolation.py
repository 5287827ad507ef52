"""coreprune must never import a framework, so that it runs anywhere NumPy does."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2] / "coreprune"
# Every module the core ships, found in the source tree (a new module is checked without a list to
# update); the adapters (coreprune.torch / coreprune.mxnet, in adapters/) are the only subpackages
# allowed to import a framework, and only when they themselves are imported.
MODULES = sorted(
    ".".join(("coreprune", *p.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
    for p in ROOT.rglob("*.py")
    if p.name != "__main__.py" and "__pycache__" not in p.parts
)


def test_every_subpackage_is_found():
    expected = {"coreprune", "coreprune.io", "coreprune.cli", "coreprune._fast", "coreprune.io.cpz"}
    assert expected <= set(MODULES)


def test_import_pulls_in_no_framework(tmp_path):
    # One fresh interpreter imports the modules one after another and reports, after each, any
    # framework module that appeared: the first module to pull one in is the one named.
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "    bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mxnet'))\n"
        "    if bad:\n"
        "        print(name, ','.join(bad))\n"
        "        break\n"
        "print('imported', len(sys.argv) - 1)\n"
    )
    # cwd outside the source tree: `python -c` puts the cwd first on sys.path.
    out = subprocess.run([sys.executable, "-c", code, *MODULES], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"imported {len(MODULES)}", f"a framework was loaded: {out.stdout.strip()}"
