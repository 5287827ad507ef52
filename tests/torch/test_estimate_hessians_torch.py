"""coreprune.estimate_hessians on real architectures traced from PyTorch: the data-free moments
follow those that coreprune.torch.input_hessians measures on the data the batch norms were
calibrated on, and GPTQ from them lowers the output error without any data."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from coreprune.torch import input_hessians, trace_graph  # noqa: E402

import coreprune as cp  # noqa: E402
from coreprune.quant_layout import SMALL_FAN_IN  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "structured_models", pathlib.Path(__file__).with_name("structured_models.py"))
sm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sm)


def _calibrated(name: str):
    """The model with batch norms holding the exact statistics of its calibration images;
    ``mobilenetv2-hardswish``: every ReLU6 replaced by a hardswish (MobileNetV3's activation)."""
    torch.manual_seed(4)
    model = sm.MobileNetV2(0.5, 10) if name.startswith("mobilenetv2") else sm.resnet18(16, 10)
    if name.endswith("hardswish"):
        for parent in list(model.modules()):
            for child_name, child in parent.named_children():
                if isinstance(child, torch.nn.ReLU6):
                    setattr(parent, child_name, torch.nn.Hardswish())
    x = torch.randn(160, 3, 32, 32)
    gen = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # trained batch norms are not the identity
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: the statistics of exactly these batches
    model.train()
    with torch.no_grad():
        model(x[:128])
    return model.eval(), x


def _correlation(h: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.maximum(np.diag(h), 1e-30))
    return h / np.outer(d, d)


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet18"])
def test_estimated_correlations_follow_the_measured_ones(name):
    """Against the moments measured on the batch norms' own calibration images. MobileNetV2: the
    propagated correlations are closer to them than independent channels (the batch norms' means
    and variances alone) on nearly every layer. ResNet-18 (3x3 kernels on small maps, whose zero
    padding the estimate ignores; sums of correlated branches): only about half, so only the
    similarity itself is checked there."""
    model, x = _calibrated(name)
    graph, weights = trace_graph(model, x[:1])
    estimated = cp.estimate_hessians(graph, weights)
    measured = input_hessians(model, x[:128].split(32))
    stats = cp.channel_statistics(graph, weights)
    closer, similarities = 0, []
    for node in graph.nodes.values():
        key = node.params.get("weight")
        if key not in estimated:
            continue
        mean, var = stats[node.inputs[0]]
        taps = estimated[key].shape[0] // mean.size
        independent = (np.kron(np.diag(var), np.eye(taps))
                       + np.kron(np.outer(mean, mean), np.ones((taps, taps))))
        iu = np.triu_indices(mean.size * taps, 1)
        truth = _correlation(measured[key])[iu]
        ours = np.corrcoef(_correlation(estimated[key])[iu], truth)[0, 1]
        closer += ours > np.corrcoef(_correlation(independent)[iu], truth)[0, 1]
        similarities.append(ours)
    assert len(similarities) >= (30 if name == "mobilenetv2" else 12)
    if name == "mobilenetv2":
        assert closer >= 0.8 * len(similarities), (closer, len(similarities))
    assert np.mean(similarities) > 0.3, similarities


def _output_errors(name: str, layout: str) -> tuple[float, float]:
    """Held-out output mean squared error of round to nearest and of data-free GPTQ (both with
    bias correction), at the plain 4-bit default or, ``layout="fan-in"``, with 8 bits for fan-ins
    of at most SMALL_FAN_IN and 4 for the rest."""
    model, x = _calibrated(name)
    graph, weights = trace_graph(model, x[:1])
    held_out = x[128:]
    with torch.no_grad():
        reference = model(held_out)

    def mse(q) -> float:
        w = cp.dequantize(q)
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in w.items()})
        with torch.no_grad():
            return float(((model(held_out) - reference) ** 2).mean())

    widths: int | dict[str, int] = 4
    if layout == "fan-in":
        widths = {n: 8 if np.prod(weights[n].shape[1:]) <= SMALL_FAN_IN else 4
                  for n in cp.selection.select(weights)}
    rtn = mse(cp.quantize(weights, bits=widths, graph=graph))
    hessians = cp.estimate_hessians(graph, weights)
    assert len(hessians) >= 30  # every 1x1 convolution but the first: through ReLU6 or hardswish
    return rtn, mse(cp.quantize(weights, bits=widths, graph=graph, hessians=hessians))


@pytest.mark.parametrize("name", ["mobilenetv2", "mobilenetv2-hardswish"])
def test_data_free_gptq_lowers_the_output_error_of_mobilenetv2(name):
    rtn, estimated = _output_errors(name, "fan-in")
    assert estimated < 0.95 * rtn, (estimated, rtn)  # 0.87 (ReLU6) and 0.53 (hardswish) on this seed


@pytest.mark.parametrize("name", [
    pytest.param("mobilenetv2", marks=pytest.mark.xfail(
        strict=True, reason="a known limit (docs/quantization.md): with the default's SMALL_TENSOR "
        "rule, half of this half-width net's estimated layers are at 8 bits, and with ReLU6 the "
        "estimate then does worse than round to nearest (1.22 of its error on this seed)")),
    "mobilenetv2-hardswish"])
def test_data_free_gptq_at_the_plain_default(name):
    rtn, estimated = _output_errors(name, "default")
    assert estimated < rtn, (estimated, rtn)  # hardswish: 0.84 on this seed
