"""``python -m coreprune``: the same as the ``coreprune`` console script."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
