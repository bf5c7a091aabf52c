"""The maths of data-parallel steps (clbench/distributed.py): row blocks, and the gradient a gathered loss gives.

The gradient tests start real gloo groups of 2 and 3 CPU processes (torch.multiprocessing) and
compare each rank's parameter gradient after DistributedDataParallel's averaging with the one
computed by hand for the whole batch.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clbench.distributed import StepRows, shard_bounds


def test_blocks_are_contiguous_and_the_first_ranks_take_the_extra_rows():
    assert [shard_bounds(7, r, 2) for r in range(2)] == [(0, 4), (4, 7)]
    assert [shard_bounds(5, r, 3) for r in range(3)] == [(0, 2), (2, 4), (4, 5)]
    assert [shard_bounds(1, r, 3) for r in range(3)] == [(0, 1), (1, 1), (1, 1)]  # two ranks without a row


@given(st.integers(0, 300), st.integers(1, 9))
@settings(max_examples=200, deadline=None)
def test_blocks_cover_every_row_once_and_differ_by_at_most_one(n, size):
    bounds = [shard_bounds(n, r, size) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(size - 1))
    sizes = [end - start for start, end in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_a_smaller_batch_never_gives_a_rank_more_rows_than_a_full_one():
    # fit cuts each rank's rows of every batch from one pass with the full batch's block size
    for size in range(1, 6):
        for full in range(size, 40):
            for n in range(0, full + 1):
                for r in range(size):
                    assert (lambda b: b[1] - b[0])(shard_bounds(n, r, size)) <= (lambda b: b[1] - b[0])(shard_bounds(full, r, size))


def test_step_rows_scatter_index_lists_the_ranks_rows_in_rank_order():
    rows = StepRows([torch.tensor([0, 1, 5]), torch.tensor([2, 3, 4])], 6, 1)
    assert rows.scatter_index().tolist() == [0, 1, 5, 2, 3, 4]
    assert rows.mine.tolist() == [2, 3, 4] and not rows.padded
    x = torch.zeros(3)
    rows.local.append(x)
    assert rows.holds(x) and not rows.holds(x.clone())


# --- gradients in a real group ---------------------------------------------------

def _rank(rank: int, size: int, folder: str, positions: list[list[int]], x: list[float], w0: float):
    """One rank: w * x_i for its rows, gathered; L = mean over the whole batch of (w x_i)^2 + 0.5 w^2 (a penalty
    every rank adds alike); the DDP-averaged dL/dw and L written to rank<r>.json."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from clbench.distributed import gather_rows

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=size)
    rows = StepRows([torch.tensor(p, dtype=torch.long) for p in positions], len(x), rank)
    local_x = torch.tensor(x, dtype=torch.float64)[rows.local_index]  # its rows, or a padding row when it has none

    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))

        def forward(self, step):
            return step()

    module = Scale()
    ddp = DistributedDataParallel(module, find_unused_parameters=True)
    loss = ddp(lambda: gather_rows(module.w * local_x, rows).square().mean() + 0.5 * module.w ** 2)
    loss.backward()
    with open(f"{folder}/rank{rank}.json", "w") as f:
        json.dump({"loss": float(loss.detach()), "grad": float(module.w.grad)}, f)
    del ddp, loss  # DDP's reducer goes before its group does
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # no interpreter teardown: gloo's threads can abort it ("terminate called without an active exception")


def _run_group(tmp_path, positions, x, w0):
    import torch.multiprocessing as mp

    size = len(positions)
    mp.spawn(_rank, args=(size, str(tmp_path), positions, x, w0), nprocs=size, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(size)]


@pytest.mark.parametrize("positions", [
    [[0, 1], [2]],  # blocks of an uneven batch
    [[2], [0, 1]],  # any assignment of rows to ranks (e.g. new rows and replayed rows split separately)
    [[0, 1, 2], [], []],  # two ranks with no row of a small last batch: each encodes a padding row
], ids=["uneven", "permuted", "padding"])
def test_ddp_over_gathered_rows_gives_the_whole_batch_gradient(tmp_path, positions):
    # x = (1, 2, 3), w = 0.5: L = mean((0.5, 1, 1.5)^2) + 0.5 * 0.25 = 3.5/3 + 0.125
    # dL/dw = 2 w mean(x^2) + w = 2 * 0.5 * 14/3 + 0.5 = 14/3 + 0.5
    results = _run_group(tmp_path, positions, [1.0, 2.0, 3.0], 0.5)
    for r in results:
        assert r["loss"] == pytest.approx(3.5 / 3 + 0.125, rel=1e-12)
        assert r["grad"] == pytest.approx(14 / 3 + 0.5, rel=1e-12)
