"""Does knowledge distillation help the pipeline's student? A sweep over splits, teachers and (T, alpha).

Not a test: a script that reruns the measurements behind docs/pipeline.md's KD section with the
pipeline's own backends. For each split seed it trains the LeNet teacher (with or without the
random-shift augmentation), then the student without KD and with each (T, alpha), 3 seeds each,
through the same loop, and prints the mean test accuracies and the gains.

    python tests/benchmarks/kd_sweep.py --framework torch --splits 0 1 2 --shift 2 --kd 4:0.9 2:0.5
    python tests/benchmarks/kd_sweep.py --json kd.json     # also write the numbers

One to two minutes per split and (T, alpha) pair with PyTorch on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

import numpy as np
from coreprune_digits.data import load_digits_28, random_shift
from coreprune_digits.pipeline import PipelineConfig, _accuracy, load_backend


def sweep(
    framework: str, splits: list[int], shift: int, pairs: list[tuple[float, float]], seeds: int
) -> list[dict]:
    config = dataclasses.replace(PipelineConfig(), framework=framework, shift=shift)
    backend = load_backend(framework)
    rows = []
    for split_seed in splits:
        split = load_digits_28(seed=split_seed)
        backend.seed(split_seed)
        teacher = backend.teacher()
        shifts = np.random.default_rng(split_seed)
        backend.fit(
            teacher,
            split.x_train,
            split.y_train,
            epochs=config.teacher_epochs,
            lr=config.lr,
            batch_size=config.batch_size,
            seed=split_seed,
            augment=(lambda b, rng=shifts: random_shift(b, shift, rng)) if shift else None,
        )
        teacher_acc = _accuracy(backend, teacher, split)
        arms: dict[str, list[float]] = {}
        for temperature, alpha in [(config.temperature, 0.0), *pairs]:
            key = "no KD" if alpha == 0 else f"T={temperature:g} alpha={alpha:g}"
            arms[key] = []
            for i in range(seeds):
                backend.seed(split_seed + i)
                student = backend.student(config.student, config.width, round(1 / config.resolution))
                backend.distil(student, teacher, split.x_train, split.y_train, temperature=temperature,
                               alpha=alpha, epochs=config.student_epochs, lr=config.student_lr,
                               batch_size=config.student_batch_size, seed=split_seed + i)  # fmt: skip
                arms[key].append(_accuracy(backend, student, split))
        base = statistics.mean(arms["no KD"])
        for key, accs in arms.items():
            mean = statistics.mean(accs)
            row = {"split": split_seed, "teacher_shift": shift, "teacher_accuracy": teacher_acc,
                   "arm": key, "accuracies": accs, "mean": mean, "gain": mean - base}  # fmt: skip
            rows.append(row)
            print(
                f"split {split_seed}  teacher {teacher_acc:6.2f}%  {key:<18} {mean:6.2f}%  "
                f"gain {mean - base:+.2f}  {np.round(accs, 2).tolist()}",
                flush=True,
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", default="torch", choices=["torch", "mxnet"])
    p.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--shift", type=int, default=2, help="teacher's shift augmentation in pixels (0: none)")
    p.add_argument("--kd", nargs="+", default=["4:0.9"], help="T:alpha pairs for the KD arms")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    pairs = [(float(t), float(a)) for t, a in (item.split(":") for item in args.kd)]
    rows = sweep(args.framework, args.splits, args.shift, pairs, args.seeds)
    kd = [r["gain"] for r in rows if r["arm"] != "no KD"]
    print(f"mean gain over {len(kd)} split x (T, alpha) cells: {statistics.mean(kd):+.2f} points")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
