"""The project's main job: train, prune, quantize and distil LeNet on real digits, in either framework.

``coreprune-pipeline --framework torch|mxnet`` (or ``python -m coreprune_digits.pipeline``) runs, on
scikit-learn's bundled handwritten digits upscaled to 28x28 (:mod:`coreprune_digits.data`):

1. ``baseline`` -- train the source's LeNet (float32) on randomly shifted images
   (:func:`coreprune_digits.data.random_shift`); ``int8`` -- the same weights quantized to
   8 bits per output channel, with no pruning, to isolate quantization's cost;
2. ``threshold`` -- zero the conv weights with ``|w| <= threshold``
   (:func:`coreprune.prune_threshold`) and fine-tune with the masks attached, so they stay zero;
3. ``sparse90`` -- magnitude-prune every weight matrix to 90% sparsity
   (:func:`coreprune.prune_magnitude`, one global threshold by default) and fine-tune likewise;
4. ``sparse90-int8`` / ``sparse90-int4`` -- quantize the 90%-sparse weights
   (:func:`coreprune.quantize`, per output channel);
5. ``student`` / ``student-kd`` -- train a lightweight student (MobileNet depthwise-separable
   with width and resolution multipliers, or SqueezeNet Fire) on the plain images without and
   with knowledge distillation from the baseline teacher, over several seeds, through one
   training loop whose only difference is the loss;
6. print one table (parameters, MACs, bytes on disk, accuracy, CPU latency per batch), check the
   targets, and write ``report.json``, ``report.png`` and one ``.cpz`` file per stage.

Sizes are the ``.cpz`` files' sizes on disk (:func:`coreprune.save_compressed`: codes bit-packed,
sparse tensors as bitmask or gap index). Pruned and quantized models are evaluated and timed as
dense float32 models after :func:`coreprune.dequantize`, so their latency is the baseline's:
the savings here are in storage, not in dense CPU arithmetic.

All the compression is :mod:`coreprune` on ``dict[str, numpy.ndarray]``; a framework is only
reached through a :class:`Backend` (:mod:`coreprune_digits.torch_train`, :mod:`coreprune_digits.mxnet_train`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

import coreprune
from coreprune.arch import conv2d_cost, linear_cost, mobilenet_student_cost, squeezenet_student_cost
from coreprune.errors import CompressionError

from .data import DigitsSplit, load_digits_28, random_shift
from .report import Stage, check_targets, format_report, write_json, write_plot

__all__ = ["Backend", "PipelineConfig", "PipelineResult", "QUICK", "load_backend", "run_pipeline", "main"]

_PROG = "coreprune-pipeline"
_BACKENDS = {
    "torch": ("coreprune_digits.torch_train", "TorchBackend"),
    "mxnet": ("coreprune_digits.mxnet_train", "MXNetBackend"),
}


class Backend(Protocol):
    """What the job needs from a framework; weights cross only as ``dict[str, numpy.ndarray]``."""

    name: str

    def seed(self, seed: int) -> None: ...
    def teacher(self) -> Any: ...
    def student(self, kind: str, width: float, pool: int = 1) -> Any: ...
    def num_parameters(self, model: Any) -> int: ...
    def weights(self, model: Any) -> dict[str, np.ndarray]: ...
    def load(self, model: Any, weights: Mapping[str, np.ndarray]) -> None: ...
    def fit(self, model: Any, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> list[float]: ...
    def distil(
        self, student: Any, teacher: Any, x: np.ndarray, y: np.ndarray, **kwargs: Any
    ) -> list[float]: ...
    def predict(self, model: Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray: ...
    def latency(self, model: Any, batch: np.ndarray, repeats: int) -> float: ...


@dataclass(frozen=True)
class PipelineConfig:
    """Every knob of the job; the defaults are the documented run.

    Attributes
    ----------
    framework : {"torch", "mxnet"}
    seed : int
        Seeds the split, the initialisation and the shuffling.
    teacher_epochs, finetune_epochs, student_epochs : int
        Passes over the 1,347 training images for each training stage.
    lr, finetune_lr, student_lr : float
        Adam's learning rates (teacher and fine-tuning decay with a cosine schedule).
    shift : int
        The teacher's training and fine-tuning see each image translated by a random offset of
        up to ``shift`` pixels (:func:`coreprune_digits.data.random_shift`); 0 turns it off. The
        students train on the plain images.
    batch_size, student_batch_size : int
        Batch sizes of the teacher's training and fine-tuning, and of the students'.
    threshold : float
        Stage 2's magnitude threshold (``|w| <= threshold`` is pruned), on the conv weights only.
    conv_pattern : tuple of str
        Glob patterns of the conv weights for stage 2.
    sparsity : float
        Stage 3's fraction of zeros over all weight matrices.
    scope : {"global", "layer"}
        Stage 3: one threshold across the weight matrices, or ``sparsity`` in each.
    bits : tuple of int
        Stage 4's bit widths (per-channel, symmetric).
    student : {"mobilenet", "squeezenet"}
    width : float
        The MobileNet student's width multiplier alpha.
    resolution : float
        The student's resolution multiplier rho = 1/k for a k dividing 28: it sees the images
        average-pooled k x k (``0.5``: 14x14, a quarter of the multiply-accumulates).
    temperature, kd_alpha : float
        Distillation temperature ``T`` and weight of the soft term.
    student_seeds : int
        Seeds per student arm; accuracies are their mean.
    latency_batch, latency_repeats : int
        Batch size of the latency measurement, and timed repeats (the median is reported).
    """

    framework: str = "torch"
    seed: int = 0
    teacher_epochs: int = 30
    finetune_epochs: int = 4
    student_epochs: int = 25
    lr: float = 3e-3
    finetune_lr: float = 1e-3
    student_lr: float = 1e-2
    shift: int = 2
    batch_size: int = 32
    student_batch_size: int = 64
    threshold: float = 0.05
    conv_pattern: tuple[str, ...] = ("conv*.weight",)
    sparsity: float = 0.9
    scope: str = "global"
    bits: tuple[int, ...] = (8, 4)
    student: str = "mobilenet"
    width: float = 0.5
    resolution: float = 0.5
    temperature: float = 4.0
    kd_alpha: float = 0.9
    student_seeds: int = 3
    latency_batch: int = 64
    latency_repeats: int = 20

    def check(self) -> None:
        """Raise :class:`coreprune.CompressionError` naming the first setting out of range."""
        if self.framework not in _BACKENDS:
            raise CompressionError(f"framework must be one of {sorted(_BACKENDS)}, got {self.framework!r}")
        for name in (
            "teacher_epochs",
            "finetune_epochs",
            "student_epochs",
            "batch_size",
            "student_batch_size",
            "student_seeds",
            "latency_batch",
            "latency_repeats",
        ):
            if int(getattr(self, name)) < 1:
                raise CompressionError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.shift < 14:
            raise CompressionError(f"shift must lie in [0, 14) pixels, got {self.shift}")
        for name in ("lr", "finetune_lr", "student_lr", "temperature", "width"):
            if not float(getattr(self, name)) > 0:
                raise CompressionError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.threshold < 0:
            raise CompressionError(f"threshold must be >= 0, got {self.threshold}")
        if not 0.0 <= self.sparsity < 1.0:
            raise CompressionError(f"sparsity must lie in [0, 1), got {self.sparsity}")
        if self.scope not in ("global", "layer"):
            raise CompressionError(f"scope must be 'global' or 'layer', got {self.scope!r}")
        pool = round(1.0 / self.resolution) if self.resolution > 0 else 0
        if pool < 1 or abs(pool * self.resolution - 1.0) > 1e-6 or 28 % pool:
            raise CompressionError(
                f"resolution must be 1/k for a k dividing 28 (1, 0.5, 0.25, ...), got {self.resolution!r}"
            )
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise CompressionError(f"kd_alpha must lie in [0, 1], got {self.kd_alpha}")
        if self.student not in ("mobilenet", "squeezenet"):
            raise CompressionError(f"student must be 'mobilenet' or 'squeezenet', got {self.student!r}")
        if not self.bits or any(not 1 <= b <= 16 for b in self.bits):
            raise CompressionError(f"bits must be integers in 1..16, got {list(self.bits)}")


#: A short run for tests and smoke checks: same stages, a few epochs, one student seed.
QUICK = PipelineConfig(
    teacher_epochs=3, finetune_epochs=1, student_epochs=2, student_seeds=1, latency_repeats=3
)


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` measured.

    Attributes
    ----------
    config : PipelineConfig
    stages : list of Stage
        One row per stage, in the order run.
    targets : list of dict
        ``name``, ``measured``, ``limit``, ``met`` for each of the issue's targets.
    wall_seconds : float
        Whole run, data loading and file writing included.
    environment : dict
        Framework, versions, CPU threads.
    files : dict
        Stage name -> path of its ``.cpz`` file.
    """

    config: PipelineConfig
    stages: list[Stage]
    targets: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def stage(self, name: str) -> Stage:
        """The row called ``name``."""
        for row in self.stages:
            if row.name == name:
                return row
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the content of ``report.json``)."""
        return {
            "config": dataclasses.asdict(self.config),
            "stages": [dataclasses.asdict(s) for s in self.stages],
            "targets": self.targets,
            "wall_seconds": self.wall_seconds,
            "environment": self.environment,
            "files": self.files,
        }


def load_backend(framework: str) -> Backend:
    """Import the framework's backend, or raise :class:`coreprune.CompressionError` saying what to install.

    Examples
    --------
    >>> load_backend("caffe")
    Traceback (most recent call last):
    ...
    coreprune.errors.CompressionError: framework must be one of ['mxnet', 'torch'], got 'caffe'
    """
    if framework not in _BACKENDS:
        raise CompressionError(f"framework must be one of {sorted(_BACKENDS)}, got {framework!r}")
    module_name, class_name = _BACKENDS[framework]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = "torch" if framework == "torch" else "mxnet"
        raise CompressionError(
            f"--framework {framework} needs {framework} installed ({exc}); pip install 'coreprune[{extra}]'"
        ) from exc
    return getattr(module, class_name)()


class _Ticker:
    """A tqdm bar on stderr counting training epochs, or nothing (``quiet``, or no tqdm)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.bar = None
        if not quiet:
            try:
                from tqdm import tqdm
            except ImportError:
                print(f"{_PROG}: tqdm not installed; running without a progress bar", file=sys.stderr)
            else:
                self.bar = tqdm(total=total, unit="epoch", file=sys.stderr, leave=False, dynamic_ncols=True)

    def stage(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)

    def tick(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _accuracy(backend: Backend, model: Any, split: DigitsSplit) -> float:
    """Test accuracy in percent."""
    logits = backend.predict(model, split.x_test)
    return 100.0 * float(np.mean(np.argmax(logits, axis=1) == split.y_test))


def _counts(weights: Mapping[str, Any]) -> tuple[int, int]:
    """(stored values, non-zero values) of a dict of arrays or QuantizedArrays (buffers included)."""
    dense = coreprune.dequantize(weights)
    return sum(int(np.size(v)) for v in dense.values()), sum(int(np.count_nonzero(v)) for v in dense.values())


def _macs(config: PipelineConfig) -> tuple[int, int]:
    """Multiply-accumulates per image of LeNet and of the configured student (:mod:`coreprune.arch`)."""
    lenet = (
        conv2d_cost(1, 20, 5, 24) + conv2d_cost(20, 50, 3, 10) + linear_cost(1250, 128) + linear_cost(128, 10)
    )
    if config.student == "mobilenet":
        student = mobilenet_student_cost(config.width, rho=config.resolution)
    else:
        student = squeezenet_student_cost(input_size=round(28 * config.resolution))
    return lenet.macs, student.macs


def _save(weights: Mapping[str, Any], out: Path, name: str, files: dict[str, str]) -> int:
    path = out / f"{name}.cpz"
    coreprune.save_compressed(weights, path, metadata={"stage": name})
    files[name] = str(path)
    return path.stat().st_size


def run_pipeline(
    config: PipelineConfig,
    out_dir: str | os.PathLike,
    *,
    backend: Backend | None = None,
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Run the six stages and return what they measured; writes ``.cpz`` files, ``report.json`` and the plot.

    Parameters
    ----------
    config : PipelineConfig
    out_dir : path-like
        Created if missing; receives ``<stage>.cpz``, ``report.json`` and ``report.png``.
    backend : Backend, optional
        Default: :func:`load_backend` of ``config.framework``.
    quiet : bool
        No progress bar.
    log : callable, optional
        Receives one line per finished stage (default: nothing).

    Returns
    -------
    PipelineResult

    Examples
    --------
    A short run (about 10 seconds with PyTorch)::

        >>> import tempfile  # doctest: +SKIP
        >>> result = run_pipeline(QUICK, tempfile.mkdtemp(), quiet=True)  # doctest: +SKIP
        >>> result.stage("sparse90").sparsity >= 0.9  # doctest: +SKIP
        True
    """
    config.check()
    started = time.perf_counter()
    backend = backend if backend is not None else load_backend(config.framework)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = log if log is not None else (lambda _text: None)
    split = load_digits_28(seed=config.seed)
    batch = split.x_test[: config.latency_batch]
    total = (
        config.teacher_epochs + 2 * config.finetune_epochs + 2 * config.student_seeds * config.student_epochs
    )
    ticker = _Ticker(total, quiet)
    lenet_macs, student_macs = _macs(config)
    stages: list[Stage] = []
    files: dict[str, str] = {}

    def record(
        name: str,
        description: str,
        weights: Mapping[str, Any],
        model: Any,
        accuracies: Sequence[float],
        macs: int = lenet_macs,
    ) -> Stage:
        values, nonzero = _counts(weights)
        row = Stage(
            name=name,
            description=description,
            parameters=backend.num_parameters(model),
            stored_values=values,
            nonzero=nonzero,
            float32_bytes=4 * values,
            nbytes=sum(int(v.nbytes) for v in weights.values()),
            disk_bytes=_save(weights, out, name, files),
            accuracy=float(np.mean(accuracies)),
            accuracy_std=float(statistics.stdev(accuracies)) if len(accuracies) > 1 else 0.0,
            accuracies=[float(a) for a in accuracies],
            latency_ms=1000.0 * backend.latency(model, batch, config.latency_repeats),
            macs=macs,
        )
        stages.append(row)
        say(f"{name:<14} acc {row.accuracy:6.2f}%  {row.disk_bytes:>9,d} B  sparsity {row.sparsity:.1%}")
        return row

    try:
        # 1. Baseline teacher, and 8-bit quantization alone.
        ticker.stage("baseline")
        backend.seed(config.seed)
        model = backend.teacher()
        shifts = np.random.default_rng(config.seed)
        augment = (lambda batch: random_shift(batch, config.shift, shifts)) if config.shift else None
        fit = dict(batch_size=config.batch_size, seed=config.seed, on_epoch=ticker.tick, augment=augment)
        backend.fit(model, split.x_train, split.y_train, epochs=config.teacher_epochs, lr=config.lr, **fit)
        base = backend.weights(model)
        record(
            "baseline",
            f"LeNet, float32, trained on images shifted by up to {config.shift} px",
            base,
            model,
            [_accuracy(backend, model, split)],
        )
        int8 = coreprune.quantize(base, 8, axis=0)
        backend.load(model, coreprune.dequantize(int8))
        record(
            "int8",
            "baseline quantized to 8 bits (per channel), no pruning",
            int8,
            model,
            [_accuracy(backend, model, split)],
        )

        def fine_tune(name: str, description: str, pruned: dict, masks: dict) -> dict[str, np.ndarray]:
            """Load the pruned weights, fine-tune with the masks kept, record and return the result."""
            backend.load(model, pruned)
            backend.fit(model, split.x_train, split.y_train, epochs=config.finetune_epochs,
                        lr=config.finetune_lr, masks=masks, **fit)  # fmt: skip
            tuned = backend.weights(model)
            record(name, description, tuned, model, [_accuracy(backend, model, split)])
            return tuned

        # 2. Threshold-prune the conv layers, fine-tune with the masks kept.
        ticker.stage("threshold + fine-tune")
        conv = ", ".join(config.conv_pattern)
        tuned = fine_tune(
            "threshold",
            f"|w| <= {config.threshold:g} zeroed in {conv}, fine-tuned",
            *coreprune.prune_threshold(base, config.threshold, include=list(config.conv_pattern)),
        )

        # 3. Magnitude-prune to the target sparsity; earlier zeros are the smallest, so they stay pruned.
        ticker.stage(f"{config.sparsity:.0%} sparse + fine-tune")
        sparse_name = f"sparse{round(100 * config.sparsity)}"
        sparse = fine_tune(
            sparse_name,
            f"{config.sparsity:.0%} of the weight matrices zeroed ({config.scope}), fine-tuned",
            *coreprune.prune_magnitude(tuned, config.sparsity, scope=config.scope),
        )

        # 4. Quantize the sparse model; zeros stay zero (symmetric codes), so the cpz keeps them sparse.
        for bits in config.bits:
            q = coreprune.quantize(sparse, bits, axis=0)
            backend.load(model, coreprune.dequantize(q))
            record(
                f"{sparse_name}-int{bits}",
                f"{sparse_name} quantized to {bits} bits (per channel)",
                q,
                model,
                [_accuracy(backend, model, split)],
            )

        # 5. Students without and with distillation from the baseline teacher.
        teacher = backend.teacher()
        backend.load(teacher, base)
        side = round(28 * config.resolution)
        kind = "squeezenet" if config.student == "squeezenet" else f"mobilenet a={config.width:g}"
        kind += f" at {side}x{side}"
        for name, alpha in (("student", 0.0), ("student-kd", config.kd_alpha)):
            ticker.stage(name)
            accuracies, first = [], None
            for i in range(config.student_seeds):
                seed = config.seed + i
                backend.seed(seed)
                student = backend.student(config.student, config.width, round(1.0 / config.resolution))
                backend.distil(
                    student,
                    teacher,
                    split.x_train,
                    split.y_train,
                    temperature=config.temperature,
                    alpha=alpha,
                    epochs=config.student_epochs,
                    lr=config.student_lr,
                    batch_size=config.student_batch_size,
                    seed=seed,
                )
                ticker.tick(config.student_epochs)
                accuracies.append(_accuracy(backend, student, split))
                first = first if first is not None else (student, backend.weights(student))
            how = f"KD T={config.temperature:g} alpha={config.kd_alpha:g}" if alpha else "no KD"
            record(
                name,
                f"{kind} student, {how}, mean of {config.student_seeds} seeds",
                first[1],
                first[0],
                accuracies,
                macs=student_macs,
            )
    finally:
        ticker.close()

    result = PipelineResult(config=config, stages=stages, files=files)
    result.wall_seconds = time.perf_counter() - started
    result.targets = check_targets(stages, sparse_name, config.bits, result.wall_seconds)
    result.environment = _environment(config.framework)
    write_json(result.to_json(), out / "report.json")
    plotted = write_plot(stages, out / "report.png", title=f"coreprune pipeline ({config.framework})")
    if plotted:
        result.files["plot"] = str(out / "report.png")
    result.files["report"] = str(out / "report.json")
    return result


def _environment(framework: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "framework": framework,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "coreprune": coreprune.__version__,
        "cpu_count": os.cpu_count(),
    }
    module = sys.modules.get("torch" if framework == "torch" else "mxnet")
    if module is not None:
        env[framework] = getattr(module, "__version__", "?")
    return env


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``coreprune-pipeline``."""
    d = PipelineConfig()
    p = argparse.ArgumentParser(
        prog=_PROG,
        description="Train LeNet on scikit-learn's digits, prune, quantize, distil; "
        "print sizes, accuracy and latency.",
    )
    p.add_argument("--framework", choices=sorted(_BACKENDS), default=d.framework)
    p.add_argument(
        "--out", default="coreprune-pipeline-out", help="folder for report.json, report.png, *.cpz"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--quick", action="store_true", help="a short run (few epochs, one student seed)")
    p.add_argument("--student", choices=["mobilenet", "squeezenet"], default=d.student)
    p.add_argument("--width", type=float, default=d.width, help="MobileNet width multiplier alpha")
    p.add_argument(
        "--resolution", type=float, default=d.resolution, help="student's resolution multiplier 1/k"
    )
    p.add_argument("--shift", type=int, default=d.shift, help="teacher's random-shift augmentation (pixels)")
    p.add_argument("--threshold", type=float, default=d.threshold)
    p.add_argument("--sparsity", type=float, default=d.sparsity)
    p.add_argument("--scope", choices=["global", "layer"], default=d.scope)
    p.add_argument("--student-seeds", type=int, default=None)
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``coreprune-pipeline``.

    Returns 0 on success, 1 for a missed target with ``--strict``, 2 for a user error (one line).
    """
    args = build_parser().parse_args(argv)
    base = QUICK if args.quick else PipelineConfig()
    config = dataclasses.replace(
        base,
        framework=args.framework,
        seed=args.seed,
        student=args.student,
        width=args.width,
        resolution=args.resolution,
        shift=args.shift,
        threshold=args.threshold,
        sparsity=args.sparsity,
        scope=args.scope,
        student_seeds=args.student_seeds if args.student_seeds is not None else base.student_seeds,
    )
    try:
        result = run_pipeline(config, args.out, quiet=args.quiet)
    except CompressionError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{_PROG}: error: {exc.filename or ''} {exc.strerror or exc}".strip(), file=sys.stderr)
        return 2
    print(format_report(result.to_json()))
    print(
        f"\nreport: {result.files['report']}"
        + (f", plot: {result.files['plot']}" if "plot" in result.files else "")
    )
    missed = [t["name"] for t in result.targets if not t["met"]]
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
