"""The pipeline's results: one row per stage, the targets it is held to, and the table, JSON and plot.

Framework-free; :mod:`coreprune_digits.pipeline` fills the rows. Files are written atomically (a
temporary file renamed into place), as everywhere in coreprune.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coreprune.io.base import atomic_write

__all__ = ["Stage", "check_targets", "format_report", "write_json", "write_plot", "make_figure"]


@dataclass
class Stage:
    """One row of the pipeline's table.

    Attributes
    ----------
    name, description : str
    parameters : int
        Trainable scalars of the model.
    stored_values : int
        Scalars in the saved dict (parameters plus buffers such as batch-norm statistics).
    nonzero : int
        Non-zero stored values (after dequantization).
    float32_bytes : int
        ``4 * stored_values``: the model's size as plain float32.
    nbytes : int
        Honest in-memory size: ``sum(v.nbytes)``, QuantizedArrays at their packed size.
    disk_bytes : int
        Size of the stage's ``.cpz`` file on disk.
    accuracy, accuracy_std : float
        Test accuracy in percent (mean and sample standard deviation over seeds; std 0 for one).
    accuracies : list of float
        Per seed.
    latency_ms : float
        Median CPU milliseconds of one inference forward pass on one batch.
    macs : int
        Multiply-accumulates of one image's forward pass, from :mod:`coreprune.arch` (dense:
        pruning and quantization do not change it here); 0 when unknown.
    sparsity : float
        ``1 - nonzero / stored_values`` (computed).

    Examples
    --------
    >>> row = Stage("s", "d", 10, 10, 5, 40, 40, 30, 90.0, 0.0, [90.0], 1.0)
    >>> row.sparsity
    0.5
    """

    name: str
    description: str
    parameters: int
    stored_values: int
    nonzero: int
    float32_bytes: int
    nbytes: int
    disk_bytes: int
    accuracy: float
    accuracy_std: float
    accuracies: list[float]
    latency_ms: float
    macs: int = 0
    sparsity: float = field(init=False)

    def __post_init__(self) -> None:
        self.sparsity = 1.0 - self.nonzero / self.stored_values if self.stored_values else 0.0


def _by_name(stages: Sequence[Stage]) -> dict[str, Stage]:
    return {s.name: s for s in stages}


def check_targets(
    stages: Sequence[Stage],
    sparse_name: str,
    bits: Sequence[int],
    wall_seconds: float,
    *,
    time_limit: float = 180.0,
) -> list[dict[str, Any]]:
    """The issue's targets, measured on ``stages``: each ``{"name", "measured", "limit", "met", "unit"}``.

    * 8-bit quantization costs at most 0.5 accuracy points, both alone (``baseline`` -> ``int8``)
      and on the sparse model (``sparseNN`` -> ``sparseNN-int8``): the larger drop is reported.
    * ``sparseNN`` after fine-tuning costs at most 1 point against ``baseline``.
    * The KD student's mean accuracy is above the plain student's.
    * ``sparseNN-int8`` is at least 10x smaller on disk than the baseline's float32 bytes.
    * The whole run takes under ``time_limit`` seconds.

    Examples
    --------
    >>> rows = [Stage("baseline", "", 1, 1, 1, 400, 400, 410, 99.0, 0, [99.0], 1.0),
    ...         Stage("int8", "", 1, 1, 1, 400, 100, 110, 98.8, 0, [98.8], 1.0)]
    >>> [(t["name"], t["met"]) for t in check_targets(rows, "sparse90", [8], 10.0)]
    [('8-bit costs <= 0.5 points', True), ('run under 180 s', True)]
    """
    rows = _by_name(stages)
    targets: list[dict[str, Any]] = []

    def add(name: str, measured: float, limit: float, met: bool, unit: str) -> None:
        targets.append(
            {"name": name, "measured": round(measured, 4), "limit": limit, "met": bool(met), "unit": unit}
        )

    base = rows.get("baseline")
    if base is not None and 8 in bits:
        drops = [base.accuracy - rows["int8"].accuracy] if "int8" in rows else []
        if sparse_name in rows and f"{sparse_name}-int8" in rows:
            drops.append(rows[sparse_name].accuracy - rows[f"{sparse_name}-int8"].accuracy)
        if drops:
            add("8-bit costs <= 0.5 points", max(drops), 0.5, max(drops) <= 0.5, "points")
    if base is not None and sparse_name in rows:
        drop = base.accuracy - rows[sparse_name].accuracy
        add(f"{sparse_name} after fine-tuning costs <= 1 point", drop, 1.0, drop <= 1.0, "points")
    if "student" in rows and "student-kd" in rows:
        gain = rows["student-kd"].accuracy - rows["student"].accuracy
        add("KD student beats the plain student (mean over seeds)", gain, 0.0, gain > 0, "points")
    if base is not None and f"{sparse_name}-int8" in rows:
        ratio = base.float32_bytes / rows[f"{sparse_name}-int8"].disk_bytes
        add(f"{sparse_name}-int8 >= 10x smaller than float32", ratio, 10.0, ratio >= 10.0, "x")
    add(f"run under {time_limit:g} s", wall_seconds, time_limit, wall_seconds < time_limit, "s")
    return targets


def format_report(report: Mapping[str, Any]) -> str:
    """The table printed at the end of a run, from ``report.json``'s content.

    Examples
    --------
    >>> row = Stage("baseline", "LeNet", 10, 10, 10, 40, 40, 48, 99.0, 0.0, [99.0], 1.5)
    >>> print(format_report({"stages": [vars(row)], "targets": [], "wall_seconds": 1.0,
    ...                      "environment": {"framework": "torch"}}))  # doctest: +ELLIPSIS
    stage ...
    baseline ...
    """
    stages = report["stages"]
    base_bytes = next((s["float32_bytes"] for s in stages if s["name"] == "baseline"), None)
    header = (
        f"{'stage':<16}{'params':>9}{'MACs':>11}{'sparsity':>9}{'disk (B)':>11}{'smaller':>9}"
        f"{'accuracy %':>14}{'ms/batch':>10}"
    )
    lines = [header, "-" * len(header)]
    for s in stages:
        smaller = f"{base_bytes / s['disk_bytes']:.1f}x" if base_bytes else "-"
        acc = f"{s['accuracy']:.2f}" + (f"±{s['accuracy_std']:.2f}" if len(s["accuracies"]) > 1 else "")
        lines.append(
            f"{s['name']:<16}{s['parameters']:>9,d}{s.get('macs', 0):>11,d}{s['sparsity']:>9.1%}"
            f"{s['disk_bytes']:>11,d}{smaller:>9}{acc:>14}{s['latency_ms']:>10.2f}"
        )
    lines.append("")
    lines.extend(f"{s['name']:<16}{s['description']}" for s in stages)
    if report.get("targets"):
        lines.append("")
        lines.append("targets:")
        for t in report["targets"]:
            mark = "met   " if t["met"] else "MISSED"
            lines.append(
                f"  {mark} {t['name']}: measured {t['measured']:g} {t['unit']} (limit {t['limit']:g})"
            )
    env = report.get("environment", {})
    lines.append("")
    lines.append(
        f"{env.get('framework', '?')}: {report['wall_seconds']:.0f} s in all; "
        "'smaller' = baseline float32 bytes / bytes on disk; ms/batch = median CPU time of one "
        "batch; pruned and quantized models run as dense float32."
    )
    return "\n".join(lines)


def write_json(report: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write ``report`` as indented JSON, atomically."""
    with atomic_write(path) as f:
        f.write(json.dumps(report, indent=2).encode("utf-8") + b"\n")


def make_figure(stages: Sequence[Stage], *, title: str = "") -> Any:
    """The report's figure: accuracy against size on disk (every point labelled), and latency per stage.

    Stages often share a size or an accuracy (int8 and its pruned variant, two students), so their
    points coincide. Each label is placed where it overlaps no label placed before it nor leaves the
    axes: beside its point if that is free, else stacked above or below with a thin leader line to
    the point. Needs matplotlib.

    Returns
    -------
    matplotlib.figure.Figure
        Drawn (label positions final); ``figure.axes[0].texts`` are the point labels.

    Examples
    --------
    >>> row = Stage("baseline", "LeNet", 10, 10, 10, 40, 40, 48, 99.0, 0.0, [99.0], 1.5)
    >>> [t.get_text() for t in make_figure([row]).axes[0].texts]
    ['baseline']
    """
    import matplotlib.ticker
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.6))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    for s in stages:
        left.errorbar(s.disk_bytes, s.accuracy, yerr=s.accuracy_std or None, fmt="o", capsize=3)
    left.set_xscale("log")
    left.margins(x=0.25, y=0.3)  # room for the labels inside the axes
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_xlabel("bytes on disk (.cpz)")
    left.set_ylabel("test accuracy (%)")
    left.grid(True, which="both", alpha=0.3)
    names = [s.name for s in stages]
    right.barh(names, [s.latency_ms for s in stages], color="tab:gray")
    right.invert_yaxis()
    right.set_xlabel("CPU latency per batch (ms, median)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _place_labels(fig, left, stages)
    fig.canvas.draw()
    return fig


def _place_labels(fig: Any, ax: Any, stages: Sequence[Stage]) -> None:
    """Annotate each point with its stage name where the label overlaps no other label."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    placed: list[Any] = []
    # Points in display order, so that the stacks of coinciding points grow away from each other.
    order = sorted(range(len(stages)), key=lambda i: (stages[i].disk_bytes, -stages[i].accuracy))
    steps = [0] + [sign * k for k in range(1, 12) for sign in (1, -1)]
    for i in order:
        s = stages[i]
        label = ax.annotate(
            s.name, (s.disk_bytes, s.accuracy), textcoords="offset points", xytext=(7, 0), fontsize=8,
            va="center", ha="left", arrowprops={"arrowstyle": "-", "color": "0.55", "lw": 0.6,
                                                "shrinkA": 0, "shrinkB": 3},
        )
        chosen = None
        for dy in steps:
            for dx, ha in ((7, "left"), (-7, "right")):
                label.set_position((dx, 11 * dy))
                label.set_horizontalalignment(ha)
                label.update_positions(renderer)
                extent = Text.get_window_extent(label, renderer).padded(1)
                inside = (box.x0 <= extent.x0 and extent.x1 <= box.x1
                          and box.y0 <= extent.y0 and extent.y1 <= box.y1)
                if inside and not any(extent.overlaps(other) for other in placed):
                    chosen = extent
                    break
            if chosen is not None:
                break
        if chosen is None:  # no free place inside the axes: the first free one outside them
            for dy in range(12, 60):
                label.set_position((7, 11 * dy * (1 if i % 2 else -1)))
                label.set_horizontalalignment("left")
                label.update_positions(renderer)
                chosen = Text.get_window_extent(label, renderer).padded(1)
                if not any(chosen.overlaps(other) for other in placed):
                    break
        placed.append(chosen)
        # a leader line only where the label is away from its point
        x, y = label.get_position()
        if y == 0:
            label.arrow_patch.set_visible(False)


def write_plot(stages: Sequence[Stage], path: str | os.PathLike, *, title: str = "") -> bool:
    """Accuracy against size on disk, and latency per stage, as a PNG; False when matplotlib is missing.

    The figure is :func:`make_figure`'s: no two point labels overlap.

    Examples
    --------
    >>> import os, tempfile
    >>> row = Stage("baseline", "LeNet", 10, 10, 10, 40, 40, 48, 99.0, 0.0, [99.0], 1.5)
    >>> path = os.path.join(tempfile.mkdtemp(), "plot.png")
    >>> write_plot([row], path) and open(path, "rb").read(4) == b"\\x89PNG"
    True
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    fig = make_figure(stages, title=title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    with atomic_write(path) as f:
        f.write(buffer.getvalue())
    return True
