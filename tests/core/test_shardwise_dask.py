"""The per-shard work as tasks on a Dask cluster (a LocalCluster here): bit-identical to --jobs 1."""

from __future__ import annotations

import numpy as np
import pytest

import coreprune.io as cio
from coreprune.errors import CompressionError
from coreprune.shardwise import ShardSettings, process_shards

distributed = pytest.importorskip(
    "distributed", reason='the Dask path needs the dask extra: pip install "coreprune[dask]"'
)


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as c:
        yield c


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_dask_gives_bit_identical_shards(tmp_path, cluster):
    rng = np.random.default_rng(3)
    w = {f"l{i}.weight": np.round(rng.standard_normal((160, 160)) * 8).astype(np.float32) / 8
         for i in range(6)}
    cio.save(w, tmp_path / "in.safetensors", max_shard_size=250_000)
    index = tmp_path / "in.safetensors.index.json"
    settings = ShardSettings(sparsity=0.6, scope="global", bits=4, axis=0)
    outs = {}
    for how, kwargs in [("local", {}), ("address", {"scheduler": cluster.scheduler_address})]:
        out = tmp_path / how
        out.mkdir()
        run = process_shards(index, out / "m.cpz.index.json", settings, **kwargs)
        assert len(run.shards) == 3
        outs[how] = _files(out)
    with distributed.Client(cluster) as client:
        out = tmp_path / "client"
        out.mkdir()
        process_shards(index, out / "m.cpz.index.json", settings, scheduler=client)
        outs["client"] = _files(out)
    assert outs["local"] == outs["address"] == outs["client"]


def test_dask_reports_the_first_bad_tensor(tmp_path, cluster):
    w = {f"l{i}.weight": np.ones((100, 100), np.float32) for i in range(4)}
    w["l2.weight"][5, 5] = np.nan
    w["l3.weight"][5, 5] = np.inf
    cio.save(w, tmp_path / "in.safetensors", max_shard_size=40_000)
    with pytest.raises(CompressionError, match="l2.weight"):
        process_shards(tmp_path / "in.safetensors.index.json", tmp_path / "o.cpz.index.json",
                       ShardSettings(sparsity=0.5, scope="global"), scheduler=cluster.scheduler_address)
    assert not list(tmp_path.glob("o*")) and not list(tmp_path.glob(".o*"))


def test_unreachable_scheduler_is_one_error(tmp_path):
    cio.save({"w": np.ones((4, 4), np.float32)}, tmp_path / "in.safetensors")
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}), \
            pytest.raises(CompressionError, match="cannot reach the Dask scheduler"):
        process_shards(tmp_path / "in.safetensors", tmp_path / "o.cpz.index.json", ShardSettings(),
                       scheduler="tcp://127.0.0.1:9")
