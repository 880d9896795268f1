"""Run by tests/test_quantize_ddp.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Every rank feeds different data (of different sizes, once an empty batch) and after every step the
codebook state is gathered and compared bit-exactly across ranks. Exits non-zero on any mismatch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from vq3dlib.quantize import VectorQuantizer
from vq3dlib.train.distributed import exit_worker


def gathered_equal(t: torch.Tensor) -> bool:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return all(torch.equal(out[0], o) for o in out[1:])


def batch(rank: int, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * rank + step)
    n = 0 if (rank == 1 and step == 3) else 40 + 13 * rank
    return torch.randn(n, 16, generator=g) * (1 + rank)


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()

    # EMA codebook with dead-code restarts
    torch.manual_seed(0)  # identical initial codebooks
    vq = VectorQuantizer(16, 64, code_dim=4, decay=0.9, dead_code_steps=2)
    restarted = 0.0
    for step in range(6):
        _, _, aux = vq(batch(rank, step))
        restarted += float(aux.stats["restarted"])
        for name in ("embed", "ema_cluster_size", "ema_embed_sum", "unused_steps"):
            assert gathered_equal(getattr(vq, name)), f"ema: {name} differs across ranks at step {step}"
    assert restarted > 0, "the test should exercise dead-code restarts"
    # the stats are global: the same on every rank
    assert gathered_equal(aux.stats["perplexity"].reshape(1))

    # without syncing the codebooks drift apart: shows the check above can fail
    torch.manual_seed(0)
    local = VectorQuantizer(16, 64, code_dim=4, decay=0.9, dead_code_steps=2, sync_distributed=False)
    local(batch(rank, 0))
    assert not gathered_equal(local.embed), "unsynced codebooks should differ"

    # loss-trained codebook inside DistributedDataParallel, with restarts
    torch.manual_seed(0)
    vq2 = VectorQuantizer(16, 64, code_dim=4, ema=False, dead_code_steps=2)
    ddp = DistributedDataParallel(vq2)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
    restarted = 0.0
    for step in range(5):
        z = batch(rank, step) if step != 3 else batch(rank, 4)  # DDP needs every rank to compute
        out, _, aux = ddp(z)
        (out.square().mean() + aux.loss).backward()
        opt.step()
        opt.zero_grad()
        restarted += float(aux.stats["restarted"])
        assert gathered_equal(vq2.embed.detach()), f"ddp: embed differs across ranks at step {step}"
        assert gathered_equal(vq2.unused_steps)
    assert restarted > 0
    if rank == 0:
        print("DDP-OK")
    # every rank must be done with its collectives before any rank tears gloo down: without this
    # barrier a rank that exits first can abort its peer mid-teardown (a flaky SIGABRT in CI)
    dist.barrier()
    dist.destroy_process_group()
    exit_worker()  # every check above has passed: no gloo teardown abort in finalisation


if __name__ == "__main__":
    main()
