"""Check that the built API reference documents every public name.

Run after ``mkdocs build`` (``tox -e docs`` does both)::

    python tests/docs_site/check_reference.py site

Every name in ``__all__`` of the public modules below must be an object in the site's
``objects.inv`` (the inventory mkdocstrings writes), under the module that exports it or the
module that defines it. ``__all__`` is read with :mod:`ast`, so no framework is imported: the
docs env needs neither torch nor mxnet. Exits 1 listing what is missing.
"""

from __future__ import annotations

import ast
import pathlib
import sys
import zlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Public module -> its source file (the adapters install as coreprune.torch / coreprune.mxnet).
PUBLIC = {
    "coreprune": ROOT / "coreprune" / "__init__.py",
    "coreprune.io": ROOT / "coreprune" / "io" / "__init__.py",
    "coreprune.torch": ROOT / "adapters" / "torch" / "__init__.py",
    "coreprune.mxnet": ROOT / "adapters" / "mxnet" / "__init__.py",
}


def public_names(source: pathlib.Path) -> list[str]:
    """The strings of a module's literal ``__all__``."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return [ast.literal_eval(e) for e in node.value.elts]  # type: ignore[attr-defined]
    raise SystemExit(f"{source}: no literal __all__")


def inventory(site: pathlib.Path) -> set[str]:
    """Object names in a Sphinx-style ``objects.inv`` (four header lines, then zlib)."""
    raw = (site / "objects.inv").read_bytes()
    body = raw.split(b"\n", 4)[4]
    names = set()
    for line in zlib.decompress(body).decode("utf-8").splitlines():
        names.add(line.split(" ", 1)[0])
    return names


def main(argv: list[str]) -> int:
    site = pathlib.Path(argv[1] if len(argv) > 1 else "site")
    documented = inventory(site)
    missing = []
    for module, source in PUBLIC.items():
        for name in public_names(source):
            if name.startswith("__"):
                continue
            if f"{module}.{name}" not in documented and not any(
                d.endswith(f".{name}") and d.startswith(module) for d in documented
            ):
                missing.append(f"{module}.{name}")
    if missing:
        print(f"{len(missing)} public names missing from the API reference:", *missing, sep="\n  ")
        return 1
    print(f"API reference covers all public names of {', '.join(PUBLIC)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
