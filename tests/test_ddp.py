"""DDP on CPU: two gloo processes train a few steps and stay in lock-step."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CONFIG = dict(width=0.125, rep_dim=16, proj_dim=16, num_experts=2, queue_size=8, batch_size=4,
              max_steps=4, epochs=2, progress=False, device="cpu", cpu_threads=1,
              checkpoint_every=2, num_workers=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    from drasclr_toolkit.patch_source import ArrayPatchSource
    from drasclr_toolkit.train import PretrainRun
    from drasclr_toolkit.runtime import shutdown

    source = ArrayPatchSource.synthetic(n_subjects=8, n_locations=3, patch_size=20, seed=0)
    run = PretrainRun(source, CONFIG, os.path.join(out, "run"))
    final = run.run()
    tr = run.trainer
    torch.save({"queues": tr.queues.state_dict(), "encoder": tr.encoder.state_dict(),
                "key_encoder": tr.key_encoder.state_dict(), "final": str(final),
                "world": dist.get_world_size(), "rank_batch": run.sampler.rank_batch},
               os.path.join(out, f"rank{rank}.pt"))
    shutdown(run.dist)


@pytest.mark.timeout(240)
def test_two_gloo_ranks_keep_identical_queues_and_weights(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2 and r0["rank_batch"] == 2
    # keys were all-gathered before enqueueing: both ranks hold the same queues, and each
    # step added the whole global batch (4 keys), not a rank's half
    for name in ("keys", "ptr", "filled", "ids"):
        assert torch.equal(r0["queues"][name], r1["queues"][name]), name
    assert int(r0["queues"]["filled"].sum()) == min(4 * 4, 3 * 8)
    ids = r0["queues"]["ids"]
    assert ids[ids >= 0].numel() == 16
    for part in ("encoder", "key_encoder"):
        for name, tensor in r0[part].items():
            if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                continue  # BatchNorm statistics are per rank, as in MoCo
            assert torch.equal(tensor, r1[part][name]), f"{part}.{name}"
    # the main rank wrote the checkpoint and the metrics
    final = torch.load(r0["final"], weights_only=True)
    assert final["step"] == 4
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 4
