"""The report both framework adapters give back from ``load_numpy``: one place for name matching.

Framework-free: it compares the target's names and shapes with the weights' and says what does not
fit. Each adapter collects its target's shapes its own way and calls :func:`match_names`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from coreprune.errors import CompressionError

__all__ = ["LoadReport", "match_names"]


class LoadReport(NamedTuple):
    """What ``load_numpy`` could not load (all empty when every name and shape matched).

    Attributes
    ----------
    missing : list of str
        Names the target has and the weights lack (left unchanged).
    unexpected : list of str
        Names the weights have and the target lacks (ignored).
    mismatched : list of (str, tuple of int, tuple of int)
        ``(name, expected_shape, got_shape)`` for names present in both with different shapes
        (left unchanged); ``expected`` is the target's shape.

    Examples
    --------
    >>> r = LoadReport(missing=[], unexpected=["extra"], mismatched=[])
    >>> r.ok, r.unexpected
    (False, ['extra'])
    """

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    @property
    def ok(self) -> bool:
        """True when every name matched with the same shape."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        """One line listing every missing and unexpected name and every shape mismatch.

        Examples
        --------
        >>> LoadReport(["b"], [], [("w", (2, 3), (3, 2))]).describe()
        'missing (in the target, not in the weights): b; shape mismatches: w (expected (2, 3), got (3, 2))'
        """
        parts = []
        if self.missing:
            parts.append(f"missing (in the target, not in the weights): {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected (in the weights, not in the target): {', '.join(self.unexpected)}")
        if self.mismatched:
            shapes = ", ".join(f"{n} (expected {e}, got {g})" for n, e, g in self.mismatched)
            parts.append(f"shape mismatches: {shapes}")
        return "; ".join(parts)


def match_names(
    target_shapes: Mapping[str, tuple[int, ...]], weights: Mapping[str, np.ndarray], *, strict: bool
) -> LoadReport:
    """Compare a target's ``name -> shape`` with ``weights``; in strict mode raise on any difference.

    Parameters
    ----------
    target_shapes : Mapping[str, tuple of int]
        The shapes the target holds, in its order.
    weights : Mapping[str, numpy.ndarray]
    strict : bool
        Raise :class:`~coreprune.errors.CompressionError` (nothing written) unless everything matches.

    Returns
    -------
    LoadReport

    Examples
    --------
    >>> import numpy as np
    >>> match_names({"w": (2,)}, {"w": np.zeros(2), "x": np.zeros(1)}, strict=False).unexpected
    ['x']
    """
    report = LoadReport(
        missing=[n for n in target_shapes if n not in weights],
        unexpected=[n for n in weights if n not in target_shapes],
        mismatched=[
            (n, tuple(target_shapes[n]), tuple(weights[n].shape))
            for n in target_shapes
            if n in weights and tuple(target_shapes[n]) != tuple(weights[n].shape)
        ],
    )
    if strict and not report.ok:
        raise CompressionError(f"load_numpy(strict=True) refused, nothing was written: {report.describe()}")
    return report
