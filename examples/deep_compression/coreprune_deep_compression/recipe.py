"""Deep Compression on MNIST, end to end: dense training, iterative pruning, weight sharing, entropy coding.

For each model (LeNet-300-100, LeNet-5) in the chosen framework:

1. train the dense model (Adam with an L2 weight decay, cosine decay) on the 60,000 training digits
   (the pickle's train and validation splits) and measure its test error;
2. prune iteratively: per-layer targets reached along a cubic schedule
   (:func:`coreprune.gradual.sparsity_schedule`, :func:`coreprune.gradual.prune_iterative`), each
   step followed by fine-tuning with the masks attached (pruned weights stay exactly zero);
3. share weights: per-layer k-means codebooks over the surviving weights
   (:func:`coreprune.weight_sharing.share_weights`), then fine-tune the centroids only (the
   gradients of each cluster summed onto its centroid);
4. save the compressed model as an entropy-coded ``.cpz`` (codebook layout, ANS-coded codes and
   relative index gaps, bit-packed where that is smaller), load it back, check it decodes to exactly
   the fine-tuned shared weights, and measure the test error of the decoded weights.

The results go to ``<out>/report.json`` (``{"models": [...]}``, one entry per model and
framework, merged with entries already there from the other framework) and ``<out>/report.png``.
Everything framework-specific is in :mod:`.torch_backend` / :mod:`.mxnet_backend`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coreprune.entropy import empirical_entropy
from coreprune.errors import CompressionError
from coreprune.gradual import prune_iterative, sparsity_schedule
from coreprune.io.cpz import load_compressed, open_reader, save_compressed
from coreprune.weight_sharing import CodebookArray, share_weights

from .data import Mnist, fetch_wheel, load_mnist

__all__ = ["RecipeConfig", "MODELS", "QUICK", "run_model", "run_recipe", "main"]

_PROG = "coreprune-deep-compression"


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """Per-layer pruning targets (fraction pruned) and codebook bits of one model."""

    sparsity: Mapping[str, float]
    bits: Mapping[str, int]


#: Han et al. keep 8% of LeNet-300-100 (fc1 8%, fc2 9%, fc3 26%) at 6 bits, and of LeNet-5 (conv1 66%,
#: conv2 12%, fc1 8%, fc2 19%) at 8 bits for conv / 5 for fc. These targets prune a little further and
#: use smaller codebooks (a 256-entry float32 codebook costs more than conv1's 300 codes).
MODELS: dict[str, ModelPlan] = {
    "lenet-300-100": ModelPlan(
        sparsity={"fc1.weight": 0.94, "fc2.weight": 0.92, "fc3.weight": 0.75},
        bits={"fc1.weight": 5, "fc2.weight": 5, "fc3.weight": 5},
    ),
    "lenet-5": ModelPlan(
        sparsity={"conv1.weight": 0.4, "conv2.weight": 0.9, "fc1.weight": 0.95, "fc2.weight": 0.85},
        bits={"conv1.weight": 6, "conv2.weight": 6, "fc1.weight": 5, "fc2.weight": 5},
    ),
}


@dataclasses.dataclass(frozen=True)
class RecipeConfig:
    """Training budget of the recipe.

    Attributes
    ----------
    dense_epochs : dict[str, int]
        Per model: epochs of dense training.
    prune_steps : dict[str, int]
        Per model: pruning steps (a cubic schedule to the targets).
    prune_epochs, final_epochs : dict[str, int]
        Per model: fine-tuning epochs after each pruning step but the last, and after the last
        (the one that reaches the targets).
    prune_lr : dict[str, float]
        Per model: Adam's initial learning rate while pruning (each step's cosine decay restarts there).
    codebook_epochs : int
        Centroid fine-tuning epochs.
    lr, codebook_lr : float
        Adam's initial learning rates of the dense and the centroid stages (cosine decay to 0).
    weight_decay : dict[str, float]
        Per model: L2 penalty of the dense and pruning stages (none on the centroids).
    batch_size : int
    eval_split : {"test", "validation"}
        ``"test"``: train on the standard 60,000 training digits (the pickle's train and validation
        splits) and report errors on the 10,000 test digits. ``"validation"``: train on the 50,000
        train digits only and report errors on the 10,000 validation digits -- the set the budget
        was chosen on, so that the test set is never used for a choice.
    train_size : int or None
        Use only the first ``train_size`` training images (None: all).
    seed : int
    """

    dense_epochs: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"lenet-300-100": 20, "lenet-5": 8})
    prune_steps: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"lenet-300-100": 6, "lenet-5": 4})
    prune_epochs: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"lenet-300-100": 3, "lenet-5": 1})
    final_epochs: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"lenet-300-100": 10, "lenet-5": 4})
    prune_lr: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"lenet-300-100": 1e-3, "lenet-5": 1e-3})
    weight_decay: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"lenet-300-100": 3e-4, "lenet-5": 1e-4})
    codebook_epochs: int = 1
    lr: float = 1e-3
    codebook_lr: float = 1e-4
    batch_size: int = 128
    eval_split: str = "test"
    train_size: int | None = None
    seed: int = 0


#: The test suite's budget: a few hundred images, one epoch per stage; checks invariants, not accuracy.
QUICK = RecipeConfig(dense_epochs={"lenet-300-100": 1, "lenet-5": 1},
                     prune_steps={"lenet-300-100": 2, "lenet-5": 2},
                     prune_epochs={"lenet-300-100": 1, "lenet-5": 1},
                     final_epochs={"lenet-300-100": 1, "lenet-5": 1},
                     weight_decay={"lenet-300-100": 1e-4, "lenet-5": 1e-4}, codebook_epochs=1, train_size=512,
                     batch_size=64)


def split_data(data: Mnist, eval_split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_eval, y_eval)`` for :attr:`RecipeConfig.eval_split`.

    ``"test"``: the 60,000 training digits (train then validation) and the 10,000 test digits;
    ``"validation"``: the 50,000 train digits and the 10,000 validation digits.

    Examples
    --------
    >>> z = np.zeros((2, 784), np.float32)
    >>> d = Mnist(z, np.zeros(2, np.int64), z, np.ones(2, np.int64), z[:1], np.zeros(1, np.int64))
    >>> [a.shape[0] for a in split_data(d, "test")], [a.shape[0] for a in split_data(d, "validation")]
    ([4, 4, 1, 1], [2, 2, 2, 2])
    """
    if eval_split == "test":
        return (np.concatenate([data.x_train, data.x_val]), np.concatenate([data.y_train, data.y_val]),
                data.x_test, data.y_test)
    if eval_split == "validation":
        return data.x_train, data.y_train, data.x_val, data.y_val
    raise CompressionError(f"eval_split must be 'test' or 'validation', got {eval_split!r}")


class _Bar:
    """A tqdm bar on stderr counting training batches, or nothing (``quiet``, or no tqdm)."""

    def __init__(self, total: int, quiet: bool, label: str) -> None:
        self.bar = None
        if not quiet:
            try:
                from tqdm import tqdm
            except ImportError:
                print(f"{_PROG}: tqdm not installed; running without a progress bar", file=sys.stderr)
            else:
                self.bar = tqdm(total=total, unit="batch", desc=label, file=sys.stderr, leave=False,
                                dynamic_ncols=True)

    def stage(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _backend(framework: str, threads: int | None = None) -> Any:
    module, cls = {"torch": (".torch_backend", "TorchBackend"), "mxnet": (".mxnet_backend", "MXNetBackend")}[
        framework]
    if threads and "mxnet" not in sys.modules:
        # MXNet reads its OpenMP thread count when the library loads, not later
        os.environ["OMP_NUM_THREADS"] = str(int(threads))
    try:
        return getattr(importlib.import_module(module, __package__), cls)(threads=threads)
    except ImportError as exc:
        raise CompressionError(f"--framework {framework} needs {framework} installed ({exc})") from exc


def _layer_table(values: Mapping[str, Any], path: Path) -> list[dict[str, Any]]:
    """One row per tensor (the paper's Tables 2-3): weights kept (%), bits, bytes of its blobs in the file.

    For shared tensors also the bits per surviving weight the file spends (codes and index) and the
    empirical entropy of the codes alone, the bound an order-0 coder of the codes approaches.
    """
    rows = []
    with open_reader(path) as reader:
        for name, v in values.items():
            stored = int(reader.storage(name)["stored_nbytes"])
            row: dict[str, Any] = {"tensor": name, "shape": list(v.shape)}
            if isinstance(v, CodebookArray):
                codes = v.codes if v.mask is None else v.codes[v.mask]
                row.update(kept_percent=round(100.0 * v.nnz / max(1, v.codes.size), 2), bits=v.bits,
                           bytes=stored, bits_per_weight=round(8.0 * stored / max(1, v.nnz), 3),
                           code_entropy=round(empirical_entropy(codes, 1 << v.bits), 3))
            else:
                row.update(kept_percent=100.0, bits=8 * v.dtype.itemsize, bytes=stored)
            rows.append(row)
    return rows


def run_model(
    model: str,
    backend: Any,
    data: Mnist,
    config: RecipeConfig,
    out: Path,
    *,
    quiet: bool = False,
) -> dict[str, Any]:
    """The whole recipe on one model; returns its report entry and writes ``<out>/<model>-<fw>.cpz``."""
    plan = MODELS[model]
    x_all, y_all, x_eval, y_eval = split_data(data, config.eval_split)
    n = x_all.shape[0] if config.train_size is None else min(config.train_size, x_all.shape[0])
    x, y = x_all[:n], y_all[:n]
    batches = -(-n // config.batch_size)
    dense_epochs, steps = config.dense_epochs[model], config.prune_steps[model]
    epochs_per_step = [config.prune_epochs[model]] * (steps - 1) + [config.final_epochs[model]]
    total = batches * (dense_epochs + sum(epochs_per_step) + config.codebook_epochs)
    bar = _Bar(total, quiet, f"{model} [{backend.name}]")
    train = dict(batch_size=config.batch_size, on_batch=bar.tick)
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    try:
        net = backend.build(model, config.seed)
        bar.stage("dense")
        backend.fit(net, x, y, epochs=dense_epochs, lr=config.lr, seed=config.seed,
                    weight_decay=config.weight_decay[model], **train)
        dense = backend.weights(net)
        dense_error = backend.error(net, x_eval, y_eval)

        schedules = {name: sparsity_schedule(s, steps) for name, s in plan.sparsity.items()}
        weights, masks = dense, None
        for step, epochs in enumerate(epochs_per_step):
            bar.stage(f"prune {step + 1}/{steps}")
            weights, masks = prune_iterative(weights, {k: v[step] for k, v in schedules.items()}, masks=masks)
            backend.load(net, weights)
            backend.fit(net, x, y, epochs=epochs, lr=config.prune_lr[model], seed=config.seed + 1 + step,
                        weight_decay=config.weight_decay[model], masks=masks, **train)
            weights = backend.weights(net)
        pruned_error = backend.error(net, x_eval, y_eval)

        bar.stage("codebooks")
        shared = share_weights(weights, plan.bits, masks=masks)
        codebooks = {k: v for k, v in shared.items() if isinstance(v, CodebookArray)}
        books = backend.fit(net, x, y, epochs=config.codebook_epochs, lr=config.codebook_lr,
                            seed=config.seed + 100, codebooks=codebooks, **train)
        final = backend.weights(net)
        values: dict[str, Any] = {k: books.get(k, np.ascontiguousarray(final[k])) for k in final}
    finally:
        bar.close()

    path = out / f"{model}-{backend.name}.cpz"
    save_compressed(values, path, entropy=True)
    loaded = load_compressed(path)
    decoded: dict[str, np.ndarray] = {}
    for name, v in values.items():
        got = loaded[name]
        if isinstance(v, CodebookArray):
            # exact decode: same codes, codebook and mask, so the same weights bit for bit
            keep = np.ones(v.shape, bool) if v.mask is None else v.mask
            same = (isinstance(got, CodebookArray) and got.nnz == v.nnz
                    and np.array_equal(got.codes[keep], v.codes[keep])
                    and np.array_equal(got.codebook, v.codebook)
                    and got.dequantize().tobytes() == v.dequantize().tobytes())
            decoded[name] = got.dequantize()
        else:
            same = np.array_equal(got, v)
            decoded[name] = got
        if not same:
            raise CompressionError(f"{path}: tensor {name!r} does not decode to what was saved")
    backend.load(net, decoded)
    compressed_error = backend.error(net, x_eval, y_eval)
    seconds = time.perf_counter() - start  # training, compression, the file's round trip, evaluation

    dense_bytes = sum(int(a.size) * 4 for a in dense.values())
    compressed_bytes = path.stat().st_size
    return {
        "model": model,
        "framework": backend.name,
        "dense_error": round(dense_error, 2),
        "pruned_error": round(pruned_error, 2),
        "compressed_error": round(compressed_error, 2),
        "dense_bytes": dense_bytes,
        "compressed_bytes": compressed_bytes,
        "ratio": round(dense_bytes / compressed_bytes, 2),
        "weights_kept_percent": round(100.0 * sum(int(m.sum()) for m in masks.values())
                                      / sum(int(m.size) for m in masks.values()), 2),
        "seconds": round(seconds, 1),
        # the machine's 1-minute load average when the model started and ended: timings on a shared
        # machine mean little without it
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "train_images": int(n),
        "eval_split": config.eval_split,
        "layers": _layer_table(values, path),
        "file": path.name,
    }


def _merge_report(path: Path, entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``report.json`` with ``entries`` replacing those of the same model and framework."""
    old: list[dict[str, Any]] = []
    if path.exists():
        try:
            old = list(json.loads(path.read_text()).get("models", []))
        except (ValueError, AttributeError):
            old = []
    keys = {(e["model"], e["framework"]) for e in entries}
    models = [e for e in old if (e.get("model"), e.get("framework")) not in keys] + list(entries)
    order = {"lenet-300-100": 0, "lenet-5": 1}
    models.sort(key=lambda e: (order.get(e["model"], 9), e["framework"]))
    return {"models": models}


def _publish(tmp: str, path: Path) -> None:
    """Rename ``tmp`` onto ``path`` with the permissions of a newly created file (mkstemp makes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    _publish(tmp, path)


def _plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for e in report["models"]:
        marker = "o" if e["framework"] == "torch" else "s"
        ax.plot([1, e["ratio"]], [e["dense_error"], e["compressed_error"]], marker=marker, linestyle="--",
                label=f'{e["model"]} ({e["framework"]})')
    ax.axvline(40, color="grey", linewidth=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (dense float32 bytes / .cpz file bytes)")
    ax.set_ylabel("test error (%)")
    ax.set_title("Deep Compression on MNIST")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    _publish(tmp, path)
    return True


def run_recipe(
    framework: str,
    out: str | os.PathLike,
    *,
    config: RecipeConfig | None = None,
    models: Sequence[str] = ("lenet-300-100", "lenet-5"),
    cache_dir: str | os.PathLike | None = None,
    data: Mnist | None = None,
    quiet: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run the recipe for ``models`` in ``framework`` and write ``report.json`` and ``report.png``.

    ``threads``: the framework's CPU threads (None: its default). Returns the merged report.
    """
    config = config or RecipeConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    backend = _backend(framework, threads)
    data = data if data is not None else load_mnist(fetch_wheel(cache_dir))
    entries = [run_model(m, backend, data, config, out, quiet=quiet) for m in models]
    report = _merge_report(out / "report.json", entries)
    _atomic_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    _plot(report, out / "report.png")
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a plain-text table (the paper's Tables 2-3, one block per model and framework)."""
    lines = []
    for e in report["models"]:
        lines.append(f'{e["model"]} [{e["framework"]}]: error {e["dense_error"]:.2f}% -> '
                     f'{e["compressed_error"]:.2f}%, {e["dense_bytes"]} -> {e["compressed_bytes"]} bytes '
                     f'({e["ratio"]:.1f}x), {e["seconds"]:.0f} s')
        for r in e["layers"]:
            extra = (f', {r["bits_per_weight"]:.2f} bits/weight (codes: entropy {r["code_entropy"]:.2f})'
                     if "bits_per_weight" in r else "")
            lines.append(f'  {r["tensor"]:<14} kept {r["kept_percent"]:6.2f}%  {r["bits"]:2d} bits  '
                         f'{r["bytes"]:7d} bytes{extra}')
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=_PROG, description="Deep Compression of LeNet-300-100 and LeNet-5")
    p.add_argument("--framework", choices=("torch", "mxnet"), default="torch")
    p.add_argument("--out", default="deep-compression-out", help="output folder (default %(default)s)")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["lenet-300-100", "lenet-5"])
    p.add_argument("--cache-dir", default=None, help="MNIST wheel cache (default: ~/.cache/coreprune)")
    p.add_argument("--quick", action="store_true", help="the test suite's tiny budget (checks, not accuracy)")
    p.add_argument("--dense-epochs", type=int, default=None, help="override both models' dense epochs")
    p.add_argument("--prune-steps", type=int, default=None, help="pruning steps (both models)")
    p.add_argument("--prune-epochs", type=int, default=None,
                   help="fine-tuning epochs after each pruning step but the last (both models)")
    p.add_argument("--final-epochs", type=int, default=None,
                   help="fine-tuning epochs after the last pruning step (both models)")
    p.add_argument("--prune-lr", type=float, default=None, help="Adam's learning rate while pruning")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="L2 penalty of the dense and pruning stages (both models)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--eval-split", choices=("test", "validation"), default=None,
                   help="test: train on 60,000 digits, report on the test set (default); validation: train "
                        "on 50,000, report on the 10,000 validation digits (for choosing a budget)")
    p.add_argument("--threads", type=int, default=1,
                   help="the framework's CPU threads (default %(default)s: fastest on the shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``coreprune-deep-compression``; 0 on success, 2 for a user error (one line)."""
    args = build_parser().parse_args(argv)
    config = QUICK if args.quick else RecipeConfig()
    changes: dict[str, Any] = {"seed": args.seed}
    if args.dense_epochs is not None:
        changes["dense_epochs"] = {m: args.dense_epochs for m in MODELS}
    if args.prune_steps is not None:
        changes["prune_steps"] = {m: args.prune_steps for m in MODELS}
    if args.prune_epochs is not None:
        changes["prune_epochs"] = {m: args.prune_epochs for m in MODELS}
    if args.final_epochs is not None:
        changes["final_epochs"] = {m: args.final_epochs for m in MODELS}
    if args.prune_lr is not None:
        changes["prune_lr"] = {m: args.prune_lr for m in MODELS}
    if args.weight_decay is not None:
        changes["weight_decay"] = {m: args.weight_decay for m in MODELS}
    for name in ("batch_size", "eval_split"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    config = dataclasses.replace(config, **changes)
    try:
        if args.threads < 1:
            raise CompressionError(f"--threads must be at least 1, got {args.threads}")
        report = run_recipe(args.framework, args.out, config=config, models=args.models,
                            cache_dir=args.cache_dir, quiet=args.quiet, threads=args.threads)
    except CompressionError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{_PROG}: error: {exc.filename or ''} {exc.strerror or exc}".strip(), file=sys.stderr)
        return 2
    print(format_report(report))
    print(f"\nreport: {Path(args.out) / 'report.json'}, plot: {Path(args.out) / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
