"""README.md's "MXNet in ten lines" runs as written and does what its comments say."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet", reason="needs MXNet")
# Without MXNet installed, "mxnet" could resolve to the tests/mxnet folder (a namespace package):
# only a real installation has mxnet.gluon.
pytest.importorskip("mxnet.gluon", reason="needs MXNet")


def test_the_mxnet_sample_runs_and_keeps_its_promises(run_readme_block):
    ns, _ = run_readme_block("MXNet in ten lines")
    net, masks, cpm, weights = ns["net"], ns["masks"], ns["cpm"], ns["weights"]
    assert set(masks) == {"0.weight"}  # "conv only": the exclude pattern keeps the Dense layer out
    np.testing.assert_array_equal(masks["0.weight"], np.abs(weights["0.weight"]) > 0.05)
    assert 0 < masks["0.weight"].mean() < 1
    np.testing.assert_array_equal(cpm.attached_masks(net)["0.weight"], masks["0.weight"])
    final = cpm.to_numpy(net)
    assert np.all(final["0.weight"][~masks["0.weight"]] == 0)  # zeros survive the 4-bit round trip
    codes = ns["q"]["0.weight"]
    assert codes.bits == 4
