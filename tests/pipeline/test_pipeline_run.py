"""The end-to-end job, short variant, in each framework: every stage runs and keeps its promises.

One ``coreprune-pipeline --quick`` run per framework (about 10-20 s) through ``main``, as a user
runs it; the checks then read the files it wrote with coreprune's own loader.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the pipeline trains on scikit-learn's digits")

from coreprune_digits.pipeline import QUICK, main  # noqa: E402

import coreprune  # noqa: E402

FRAMEWORKS = [
    pytest.param("torch", marks=[pytest.mark.torch, pytest.mark.slow]),
    pytest.param("mxnet", marks=[pytest.mark.mxnet, pytest.mark.slow]),
]
STAGES = [
    "baseline",
    "int8",
    "threshold",
    "sparse90",
    "sparse90-int8",
    "sparse90-int4",
    "student",
    "student-kd",
]
WEIGHTS = ["conv1.weight", "conv2.weight", "dense1.weight", "dense2.weight"]


@pytest.fixture(scope="module", params=FRAMEWORKS)
def run(request, tmp_path_factory):
    pytest.importorskip(request.param, reason=f"the {request.param} pipeline needs {request.param}")
    out = tmp_path_factory.mktemp(f"pipeline-{request.param}")
    code = main(["--framework", request.param, "--quick", "--quiet", "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    return code, out, report


def _stage(report, name):
    return next(s for s in report["stages"] if s["name"] == name)


def test_every_stage_ran_and_the_baseline_learned(run, capsys):
    code, out, report = run
    assert code == 0
    assert [s["name"] for s in report["stages"]] == STAGES
    assert report["config"]["teacher_epochs"] == QUICK.teacher_epochs
    assert _stage(report, "baseline")["accuracy"] > 80.0  # 10 classes: chance is 10%
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert {t["name"] for t in report["targets"]} >= {
        "KD student beats the plain student (mean over seeds)",
        "sparse90-int8 >= 10x smaller than float32",
    }


def test_sizes_are_the_files_on_disk(run):
    _, out, report = run
    for s in report["stages"]:
        assert (out / f"{s['name']}.cpz").stat().st_size == s["disk_bytes"]
    base = _stage(report, "baseline")
    assert base["float32_bytes"] == 4 * base["parameters"]  # LeNet has no buffers
    assert base["parameters"] == 20 * 25 + 20 + 50 * 180 + 50 + 128 * 1250 + 128 + 10 * 128 + 10
    # Sizes do not depend on training: the pruned 8-bit teacher is >= 10x smaller even in a short run.
    assert base["float32_bytes"] / _stage(report, "sparse90-int8")["disk_bytes"] >= 10


def test_threshold_masks_were_kept_while_fine_tuning(run):
    _, out, report = run
    base = coreprune.load_compressed(out / "baseline.cpz")
    tuned = coreprune.load_compressed(out / "threshold.cpz")
    threshold = report["config"]["threshold"]
    for name in ("conv1.weight", "conv2.weight"):
        pruned = np.abs(base[name]) <= threshold
        assert pruned.any()
        assert np.all(tuned[name][pruned] == 0), name
        assert not np.array_equal(tuned[name][~pruned], base[name][~pruned])  # the rest kept learning
    assert not np.array_equal(tuned["dense1.weight"], base["dense1.weight"])
    assert np.count_nonzero(tuned["dense1.weight"]) == tuned["dense1.weight"].size


def test_sparse_stage_has_exactly_the_global_count_of_zeros(run):
    _, out, report = run
    sparse = coreprune.load_compressed(out / "sparse90.cpz")
    zeros = sum(int(np.sum(sparse[n] == 0)) for n in WEIGHTS)
    total = sum(sparse[n].size for n in WEIGHTS)
    assert zeros == round(0.9 * total)  # fine-tuning with masks moved none of them
    tuned = coreprune.load_compressed(out / "threshold.cpz")
    for name in ("conv1.weight", "conv2.weight"):
        assert np.all(sparse[name][tuned[name] == 0] == 0)  # earlier zeros stay pruned


def test_quantized_stages_hold_integer_codes_of_the_sparse_weights(run):
    _, out, _ = run
    sparse = coreprune.load_compressed(out / "sparse90.cpz")
    for bits in (8, 4):
        q = coreprune.load_compressed(out / f"sparse90-int{bits}.cpz")
        for name in WEIGHTS:
            assert isinstance(q[name], coreprune.QuantizedArray) and q[name].bits == bits
            assert np.all(q[name].dequantize()[sparse[name] == 0] == 0)
        expected = coreprune.quantize(sparse, bits, axis=0)
        for name in WEIGHTS:
            np.testing.assert_array_equal(q[name].codes, expected[name].codes)


def test_students_are_the_cost_models_size(run):
    _, out, report = run
    from coreprune.arch import mobilenet_student_cost

    # rho = 1/2: an average pool in front of the student (no parameters), then the student itself.
    student = coreprune.load_compressed(out / "student-kd.cpz")
    assert report["config"]["resolution"] == 0.5
    assert student["1.stem.weight"].shape[0] == 8 and not any(n.startswith("0.") for n in student)

    for name in ("student", "student-kd"):
        assert _stage(report, name)["parameters"] == mobilenet_student_cost(report["config"]["width"]).params
    assert _stage(report, "student")["parameters"] < _stage(report, "baseline")["parameters"] / 10
    # MACs per image: LeNet 20*25*24*24 + 50*180*10*10 + 1250*128 + 128*10; the student at 14x14.
    assert _stage(report, "baseline")["macs"] == 288_000 + 900_000 + 160_000 + 1_280
    cost = mobilenet_student_cost(report["config"]["width"], rho=report["config"]["resolution"])
    assert _stage(report, "student-kd")["macs"] == cost.macs < _stage(report, "baseline")["macs"] / 10
