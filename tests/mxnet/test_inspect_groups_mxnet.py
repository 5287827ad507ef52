"""``coreprune inspect PARAMS --groups SYMBOL.json`` on checkpoints that MXNet itself exported
(``HybridBlock.export``), read in a process where MXNet cannot be imported; the groups and their L2
scores equal those computed from the live blocks through :mod:`coreprune.mxnet`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
pytest.importorskip("mxnet.gluon", reason="needs a real MXNet installation")

from coreprune.mxnet import mobilenet_student, squeezenet_student  # noqa: E402
from coreprune.mxnet.structured import block_symbol  # noqa: E402

from coreprune.structured import coupling_groups, graph_from_mxnet_json, group_importance  # noqa: E402

# the CLI run with MXNet made unimportable: "import mxnet" raises ImportError in that process
_NO_MXNET = (
    "import sys; sys.modules['mxnet'] = None; from coreprune.cli import main; "
    "sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize(
    "build", [squeezenet_student, lambda: mobilenet_student(0.5)], ids=["squeezenet", "mobilenet"]
)
def test_cli_groups_of_an_exported_block_equal_the_live_blocks(tmp_path, build):
    mx.random.seed(0)
    net = build()
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((1, 1, 28, 28)))
    prefix = str(tmp_path / "net")
    net.export(prefix)
    done = subprocess.run(
        [sys.executable, "-c", _NO_MXNET, "inspect", prefix + "-0000.params",
         "--groups", prefix + "-symbol.json", "--json"],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)

    js, arg, aux = block_symbol(net)
    weights = {**arg, **aux}
    groups = coupling_groups(graph_from_mxnet_json(js, weights, {"data": (1, 1, 28, 28)}), weights)
    assert len(groups) >= 3
    assert [(g["name"], g["channels"], g["nodes"]) for g in doc["groups"]] == [
        (g.name, len(g), list(g.nodes)) for g in groups
    ]
    for row, g in zip(doc["groups"], groups):
        np.testing.assert_allclose(row["l2"], group_importance(g, weights, "l2"), rtol=1e-12)
