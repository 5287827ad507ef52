"""Every fenced python block of README.md is run by a test (none can go stale unnoticed)."""

from __future__ import annotations

import pathlib

RUN_BY = {
    "PyTorch in ten lines": "tests/torch/test_readme_torch.py",
    "MXNet in ten lines": "tests/mxnet/test_readme_mxnet.py",
}


def test_every_python_block_of_the_readme_has_a_test_that_runs_it(readme_blocks):
    blocks = readme_blocks
    assert set(blocks) == set(RUN_BY)
    root = pathlib.Path(__file__).parents[1]
    for heading, test_file in RUN_BY.items():
        assert len(blocks[heading]) == 1, heading
        assert f'run_readme_block("{heading}")' in (root / test_file).read_text(), test_file
