"""Structured channel pruning: parameters, MACs and CPU latency, dense vs pruned vs Torch-Pruning.

A script, not a test (pytest does not collect ``tests/benchmarks``). Run it from the repository root
in an environment with torch (and, for the MXNet rows, mxnet; for the peer rows, torch-pruning)::

    python tests/benchmarks/bench_structured.py                                   # every model, ~10 min
    python tests/benchmarks/bench_structured.py --models resnet50 --amounts 0.5   # the headline row
    python tests/benchmarks/bench_structured.py --frameworks torch mxnet --out structured.json
    python tests/benchmarks/bench_structured.py --frameworks mxnet --round-to 8      # MXNet rows only

For each model (ResNet-18, ResNet-50, MobileNetV2, SqueezeNet 1.1 at full width, random weights,
built in tests/torch/structured_models.py and its Gluon twin, which gets the torch model's weights)
and each amount, it prunes with
``coreprune.torch.prune_channels`` (``"l2"``, per layer) and, where installed, with Torch-Pruning 1.6.1
(``GroupMagnitudeImportance(p=2)``, same ratio, classifier kept), then reports

* parameters (trainable scalars) and MACs of one sample, from :mod:`coreprune.arch`'s cost model
  applied to every convolution and dense layer (output sizes from one traced forward pass);
* CPU latency at batch 1 and ``--batch`` (default 32) at ``--size`` pixels (default 160): the median
  of ``--repeats`` timed forward passes after one warm-up, with the spread (min..max), in eval mode
  under ``torch.inference_mode``; MXNet blocks hybridized with ``static_alloc``;
* speed-up = dense median / pruned median, measured in the same run.

The machine the figures in docs/structured.md come from has 2 cores shared with other jobs; the
load average is printed with the results, and ratios measured in one run are more stable than the
absolute times.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _time(fn, repeats: int) -> tuple[float, float, float]:
    fn()  # warm-up (allocations, MXNet's static memory plan)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, min(times) * 1e3, max(times) * 1e3


def _cost(model, x):
    """Parameters and MACs of one sample from coreprune.arch's cost model (conv and dense layers)."""
    import torch

    from coreprune.arch import Cost, batchnorm_cost, conv2d_cost, linear_cost

    total = Cost(0, 0)
    hooks = []

    def on_conv(m, _inp, out):
        nonlocal total
        total = total + conv2d_cost(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            tuple(out.shape[2:]),
            groups=m.groups,
            bias=m.bias is not None,
        )

    def on_linear(m, _inp, _out):
        nonlocal total
        total = total + linear_cost(m.in_features, m.out_features, bias=m.bias is not None)

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            total = total + batchnorm_cost(m.num_features)
        elif isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(on_conv))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(on_linear))
    with torch.inference_mode():
        model(x[:1])
    for h in hooks:
        h.remove()
    return total.params, total.macs


def _torch_pruning(model, x, amount, classifier, round_to):
    import torch_pruning as tp

    model = copy.deepcopy(model)
    imp = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None)
    tp.pruner.MagnitudePruner(
        model,
        x[:1],
        importance=imp,
        pruning_ratio=amount,
        ignored_layers=[classifier(model)],
        round_to=round_to if round_to > 1 else None,
    ).step()
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "mobilenetv2", "squeezenet"])
    parser.add_argument("--amounts", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--frameworks", nargs="+", default=["torch"], choices=["torch", "mxnet"])
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--round-to", type=int, default=1, help="keep channel counts multiples of this")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    import torch

    sys.path.insert(0, str(ROOT))
    from coreprune.torch import prune_channels

    sm = _load(ROOT / "tests" / "torch" / "structured_models.py", "structured_models")
    builders = {
        "resnet18": (lambda: sm.resnet18(), lambda m: m.fc),
        "resnet50": (lambda: sm.resnet50(), lambda m: m.fc),
        "mobilenetv2": (lambda: sm.MobileNetV2(), lambda m: m.classifier[1]),
        "squeezenet": (lambda: sm.SqueezeNet(), lambda m: m.classifier[1]),
    }
    try:
        import torch_pruning  # noqa: F401

        have_tp = True
    except ImportError:
        have_tp = False
    if "mxnet" in args.frameworks:
        import mxnet as mx
        from coreprune.mxnet import prune_channels as mx_prune
        from coreprune.mxnet.blocks import TORCH_LEAF_NAMES

        smx = _load(ROOT / "tests" / "mxnet" / "structured_models_mx.py", "structured_models_mx")
        mx_builders = {
            "resnet18": lambda: smx.resnet18(),
            "resnet50": lambda: smx.resnet50(),
            "mobilenetv2": lambda: smx.MobileNetV2(),
            "squeezenet": lambda: smx.SqueezeNet(),
        }
    rows = []
    print(f"# {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    print(
        f"# input {args.size}x{args.size}, batch 1 and {args.batch}, "
        f"median (min..max) of {args.repeats} runs, ms"
    )
    for name in args.models:
        torch.manual_seed(0)
        build, classifier = builders[name]
        dense = build().eval()
        xb = torch.randn(args.batch, 3, args.size, args.size)
        variants = [("dense", 0.0, dense)]
        for amount in args.amounts:
            if "torch" not in args.frameworks:
                continue
            small = prune_channels(dense, xb[:1], amount, round_to=args.round_to).eval()
            variants.append(("coreprune", amount, small))
            if have_tp:
                peer = _torch_pruning(dense, xb, amount, classifier, args.round_to).eval()
                variants.append(("torch-pruning", amount, peer))
        base = {}
        for who, amount, model in variants if "torch" in args.frameworks else []:
            params, macs = _cost(model, xb)
            row = {
                "model": name,
                "framework": "torch",
                "method": who,
                "amount": amount,
                "params": params,
                "macs": macs,
            }
            for b in (1, args.batch):
                with torch.inference_mode():
                    med, lo, hi = _time(lambda m=model, x=xb[:b]: m(x), args.repeats)
                row[f"ms_b{b}"] = (med, lo, hi)
                if who == "dense":
                    base[b] = med
                row[f"speedup_b{b}"] = base[b] / med
            rows.append(row)
            _print(row, args.batch)
        if "mxnet" in args.frameworks:
            gnet = mx_builders[name]()
            gnet.initialize()
            # The torch model's weights, so that both frameworks prune the same model to the same shapes.
            state = dense.state_dict()
            for key, param in gnet._collect_params_with_prefix().items():
                prefix, _, leaf = key.rpartition(".")
                param.set_data(mx.nd.array(state[f"{prefix}.{TORCH_LEAF_NAMES.get(leaf, leaf)}"].numpy()))
            xm = mx.nd.array(xb.numpy())
            gvariants = [("dense", 0.0, gnet)] + [
                ("coreprune", a, mx_prune(gnet, xm[:1], a, round_to=args.round_to)) for a in args.amounts
            ]
            gbase = {}
            for who, amount, block in gvariants:
                block.hybridize(static_alloc=True, static_shape=True)
                row = {"model": name, "framework": "mxnet", "method": who, "amount": amount}
                row["params"] = sum(
                    p.data().size for p in block.collect_params().values() if p.grad_req != "null"
                )
                for b in (1, args.batch):
                    med, lo, hi = _time(lambda blk=block, xb=xm[:b]: blk(xb).wait_to_read(), args.repeats)
                    row[f"ms_b{b}"] = (med, lo, hi)
                    if who == "dense":
                        gbase[b] = med
                    row[f"speedup_b{b}"] = gbase[b] / med
                rows.append(row)
                _print(row, args.batch)
    print(f"# load average at the end {os.getloadavg()}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


def _print(row: dict, batch: int) -> None:
    macs = f"{row['macs'] / 1e6:9.1f}M" if "macs" in row else " " * 10
    cells = [
        f"{row['model']:12s} {row['framework']:6s} {row['method']:14s} {row['amount']:4.0%}",
        f"params {row['params'] / 1e6:6.2f}M MACs {macs}",
    ]
    for b in (1, batch):
        med, lo, hi = row[f"ms_b{b}"]
        cells.append(f"b{b}: {med:8.1f} ({lo:.1f}..{hi:.1f}) x{row[f'speedup_b{b}']:.2f}")
    print(" | ".join(cells), flush=True)


if __name__ == "__main__":
    sys.exit(main())
