"""Structured pruning + fine-tuning on real data: LeNet on scikit-learn's digits at 2x fewer MACs.

The issue's target: after fine-tuning, a structurally pruned LeNet-5 or small CNN loses at most 0.5
point of test accuracy at 2x fewer MACs. For each seed this script

1. trains the digits example's LeNet (:func:`coreprune_digits.torch_models.lenet`, or its Gluon
   twin with ``--framework mxnet``) on :func:`coreprune_digits.data.load_digits_28` with the
   example's training glue (``TorchBackend`` / ``MXNetBackend``: Adam, cosine decay, random shifts);
2. picks the smallest ``amount`` on a 0.01 grid at which ``prune_channels`` (``"l2"``, per layer)
   cuts the MACs of one sample (:mod:`coreprune.arch`'s cost model, convs and dense layers) at
   least ``--mac-ratio`` times, and prunes to it;
3. fine-tunes the pruned, physically smaller model with the same glue;

and prints dense vs pruned test accuracy, MACs and parameters, then the median (min..max) over the
seeds of the accuracy lost. Run::

    python tests/benchmarks/bench_structured_finetune.py                      # PyTorch, 3 seeds, ~2.5 min
    python tests/benchmarks/bench_structured_finetune.py --framework mxnet    # the same in Gluon (mx venv)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from coreprune_digits.data import load_digits_28, random_shift

from coreprune.arch import Cost, conv2d_cost, linear_cost


def _mxnet_cost(block, x) -> tuple[int, int]:
    """(parameters, MACs) of one sample of an MXNet block, from its symbol's inferred shapes."""
    import mxnet as mx

    sym = block(mx.sym.var("data"))
    internals = sym.get_internals()
    arg_shapes, out_shapes, _ = internals.infer_shape(data=(1, *x.shape[1:]))
    args = dict(zip(internals.list_arguments(), arg_shapes))
    outs = dict(zip(internals.list_outputs(), out_shapes))
    nodes = json.loads(sym.tojson())["nodes"]
    total = Cost(0, 0)
    for n in nodes:
        attrs = n.get("attrs", {})
        bias = attrs.get("no_bias", "False") not in ("True", "true", "1")
        if n["op"] in ("Convolution", "FullyConnected"):
            w = args[nodes[n["inputs"][1][0]]["name"]]
            if n["op"] == "Convolution":
                g = int(attrs.get("num_group", "1"))
                out = tuple(outs[n["name"] + "_output"][2:])
                total = total + conv2d_cost(w[1] * g, w[0], tuple(w[2:]), out, groups=g, bias=bias)
            else:
                total = total + linear_cost(w[1], w[0], bias=bias)
    return total.params, total.macs


def _framework(name: str):
    """(backend, lenet builder, prune_channels, cost, to-input) of one framework."""
    if name == "torch":
        import torch
        from bench_structured import _cost  # this folder's cost-model walk (convs, dense layers, norms)
        from coreprune.torch import prune_channels
        from coreprune_digits.torch_models import lenet
        from coreprune_digits.torch_train import TorchBackend

        torch.set_num_threads(1)  # the recorded figures were measured so; one thread is also fastest here
        return TorchBackend(), lenet, prune_channels, _cost, torch.from_numpy
    import mxnet as mx
    from coreprune.mxnet import prune_channels
    from coreprune_digits.mxnet_models import lenet
    from coreprune_digits.mxnet_train import MXNetBackend

    def build():
        net = lenet()
        net.initialize(mx.init.Xavier())
        return net

    return MXNetBackend(), build, prune_channels, _mxnet_cost, mx.nd.array


def accuracy(backend, model, x: np.ndarray, y: np.ndarray) -> float:
    """Test accuracy in percent."""
    return 100.0 * float(np.mean(backend.predict(model, x).argmax(1) == y))


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    split = load_digits_28(seed=seed)
    backend, lenet, prune_channels, cost, to_input = _framework(args.framework)
    backend.seed(seed)
    shifts = np.random.default_rng(seed)
    fit = dict(batch_size=32, seed=seed, augment=lambda b: random_shift(b, 2, shifts))
    dense = lenet()
    backend.fit(dense, split.x_train, split.y_train, epochs=args.epochs, lr=3e-3, **fit)
    example = to_input(split.x_train[:2])
    d_params, d_macs = cost(dense, example)
    for amount in np.arange(0.01, 0.96, 0.01):
        pruned = prune_channels(dense, example, float(amount))
        p_params, p_macs = cost(pruned, example)
        if d_macs / p_macs >= args.mac_ratio:
            break
    before = accuracy(backend, pruned, split.x_test, split.y_test)
    backend.fit(pruned, split.x_train, split.y_train, epochs=args.finetune_epochs, lr=1e-3, **fit)
    return {
        "seed": seed, "amount": float(amount),
        "dense_acc": accuracy(backend, dense, split.x_test, split.y_test),
        "pruned_acc_before": before, "pruned_acc": accuracy(backend, pruned, split.x_test, split.y_test),
        "dense_macs": d_macs, "pruned_macs": p_macs, "dense_params": d_params, "pruned_params": p_params,
        "shapes": {k: v.shape for k, v in backend.weights(pruned).items() if k.endswith("weight")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12, help="training epochs of the dense LeNet")
    parser.add_argument("--finetune-epochs", type=int, default=6)
    parser.add_argument("--mac-ratio", type=float, default=2.0, help="prune until MACs fall this many times")
    parser.add_argument("--framework", choices=("torch", "mxnet"), default="torch")
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = []
    for seed in range(args.seeds):
        r = run_seed(args, seed)
        rows.append(r)
        print(
            f"seed {seed}: amount {r['amount']:.2f}  dense {r['dense_acc']:.2f}%  "
            f"pruned {r['pruned_acc']:.2f}% "
            f"(before fine-tuning {r['pruned_acc_before']:.2f}%)  "
            f"MACs {r['dense_macs'] / 1e6:.3f}M -> {r['pruned_macs'] / 1e6:.3f}M "
            f"(x{r['dense_macs'] / r['pruned_macs']:.2f})  params {r['dense_params']:,} -> "
            f"{r['pruned_params']:,} (x{r['dense_params'] / r['pruned_params']:.2f})",
            flush=True,
        )
        print(f"        pruned weights: {r['shapes']}", flush=True)
    drops = [r["dense_acc"] - r["pruned_acc"] for r in rows]
    print(f"accuracy lost (points, dense - pruned after fine-tuning): median {statistics.median(drops):.2f} "
          f"(min {min(drops):.2f} .. max {max(drops):.2f}) over {len(rows)} seed(s); "
          f"test set {len(load_digits_28(seed=0).y_test)} images (1 image = "
          f"{100 / len(load_digits_28(seed=0).y_test):.2f} point); {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
