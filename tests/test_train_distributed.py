"""Tests for vq3dlib.train.distributed: single-process fallbacks and a real 2-process gloo DDP step."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vq3dlib.train import distributed as D

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    """
    import sys
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP
    from vq3dlib.train import distributed as D

    out = sys.argv[1]
    info = D.init_distributed(device="cpu")
    assert D.is_distributed() and info.world_size == D.world_size() == 2
    assert D.rank() == info.rank and D.is_main_process() == (info.rank == 0)
    D.seed_everything(0)  # seed + rank: different init weights and data on each rank
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    ddp = DDP(model)  # broadcasts rank 0's weights
    synced = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    loss = (ddp(x) - y).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    mean_rank = D.all_reduce_mean(torch.tensor(info.rank))
    D.barrier()
    torch.save(
        {"state": model.state_dict(), "init": init, "synced": synced, "x": x, "y": y,
         "rank": info.rank, "mean_rank": mean_rank, "backend": torch.distributed.get_backend()},
        f"{out}/rank{info.rank}.pt",
    )
    D.cleanup()
    assert not D.is_distributed()
    D.exit_worker()  # no gloo teardown abort after the work is done
    """
)


def test_two_process_ddp_step_gives_identical_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on CPU even on a GPU machine
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert (r0["rank"], r1["rank"]) == (0, 1) and r0["backend"] == "gloo"
    assert r0["mean_rank"].item() == r1["mean_rank"].item() == 0.5
    # the ranks started from different weights and saw different data...
    assert not torch.equal(r0["init"]["0.weight"], r1["init"]["0.weight"])
    assert not torch.equal(r0["x"], r1["x"])
    # ...DDP synchronised the weights, and after one step they are identical on both ranks
    for k in r0["state"]:
        assert torch.equal(r0["synced"][k], r0["init"][k]) and torch.equal(r1["synced"][k], r0["init"][k])
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    # and equal to one single-process step on the concatenated batch (mean of per-rank gradients)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model.load_state_dict(r0["init"])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.cat([r0["x"], r1["x"]]), torch.cat([r0["y"], r1["y"]])
    (model(x) - y).square().mean().backward()
    opt.step()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-5, atol=1e-6)
        assert not torch.equal(v, r0["init"][k])


def test_single_process_fallbacks(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    info = D.init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (0, 1, 0, True)
    assert not D.is_distributed() and D.world_size() == 1 and D.rank() == 0 and D.is_main_process()
    x = torch.tensor([1, 2, 3])
    y = D.all_reduce_mean(x)
    assert y.dtype == torch.float32 and y.tolist() == [1.0, 2.0, 3.0] and y.data_ptr() != x.data_ptr()
    D.barrier()
    D.cleanup()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert D.init_distributed(device="cpu").world_size == 1


def test_seed_everything_per_rank(monkeypatch):
    import random

    import numpy as np

    assert D.seed_everything(5) == 5
    a = (torch.rand(2), np.random.rand(), random.random())
    D.seed_everything(5)
    b = (torch.rand(2), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    monkeypatch.setattr(D, "rank", lambda: 3)
    assert D.seed_everything(5) == 8 and D.seed_everything(5, per_rank=False) == 5


def test_errors(monkeypatch):
    with pytest.raises(ValueError, match="device"):
        D.init_distributed(device="tpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        D.init_distributed(device="cpu")
    with pytest.raises(TypeError, match="tensor"):
        D.all_reduce_mean(1.0)
    with pytest.raises(ValueError, match="seed"):
        D.seed_everything(-1)


def test_exit_worker_flushes_its_output_and_skips_the_interpreter_finalisation():
    script = (
        "import atexit\n"
        "from vq3dlib.train.distributed import exit_worker\n"
        "atexit.register(lambda: print('finalised'))\n"
        "print('done', end='')\n"  # still in the pipe's buffer: exit_worker must flush it
        "exit_worker(3)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-c", script]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and proc.stdout == "done", (proc.returncode, proc.stdout, proc.stderr[-2000:])


def test_the_cli_ends_a_launched_worker_through_exit_worker(monkeypatch):
    import vq3dlib.cli as cli

    exits = []

    class Exited(Exception):
        pass

    def fake_exit(code=0):
        exits.append(code)
        raise Exited

    monkeypatch.setattr(D, "exit_worker", fake_exit)
    monkeypatch.setattr(cli, "cmd_eval", lambda args: 0)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert cli.main(["eval", "--model", "x"]) == 0 and exits == []  # one process: a plain return
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(Exited):
        cli.main(["eval", "--model", "x"])
    assert exits == [0]
