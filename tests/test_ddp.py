"""What yolokd owns under DDP: the method's gradients, averaged across ranks by ``KDTrainer.optimizer_step``.

The method lives outside ``self.model`` (Ultralytics' DDP wrapper averages only the student's gradients), so
``KDTrainer.optimizer_step`` all-reduces the method's gradients itself, then clips them. Here two real CPU processes
(torch.distributed, gloo) run that very method on a minimal trainer: the attributes ``optimizer_step`` and Ultralytics'
``optimizer_step`` under it read (a DDP-wrapped student, the method, an optimizer over both, the scaler, device,
world size). Each rank feeds its own, recorded gradients; the test computes the expected mean (and clipping) by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO

#: One rank: 3 optimizer steps through the real ``KDTrainer.optimizer_step``; argv: rank, world size, rendezvous file,
#: output file. Method gradients of step s on rank r come from a seeded generator, scaled to norm ``NORMS[s]`` (each
#: rank alike; their mean's norm is then about NORMS[s] / sqrt(2)): under the bound, far above it, and at step 2 rank 1
#: has none at all (its KD terms were dropped on that step), as ``p.grad is None`` after Ultralytics' zero_grad.
WORKER = r"""
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from yolokd.engine.trainer import KDTrainer
from yolokd.methods import build_method

rank, world, rendezvous, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
NORMS = [4.0, 1000.0, 1000.0]
dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world,
                        timeout=timedelta(seconds=60))  # a rank left waiting in a collective errors out
torch.manual_seed(0)  # the same initial weights on every rank, as DDP and a shared seed give
student = nn.Linear(6, 4)
method = build_method("mimic", [4, 8, 16], [8, 16, 32])
tr = KDTrainer.__new__(KDTrainer)  # only what optimizer_step (yolokd's and Ultralytics') reads
tr.model, tr.method = DDP(student), method
tr.optimizer = torch.optim.SGD([{"params": list(student.parameters())},
                                {"params": list(method.parameters()), "kd": True}], lr=0.1, momentum=0.9)
tr.scaler = torch.amp.GradScaler("cpu", enabled=False)
tr.device, tr.world_size, tr.ema = torch.device("cpu"), world, None
names = [n for n, _ in method.named_parameters()]
params = [p for _, p in method.named_parameters()]
before_step = []
tr.optimizer.register_step_pre_hook(lambda opt, args, kwargs: before_step.append(
    {n: p.grad.detach().clone() for n, p in zip(names, params)}))  # after yolokd's averaging and clipping
fed = []
for step, norm in enumerate(NORMS):
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(3, 6, generator=g)
    loss = tr.model(x).pow(2).mean()  # the student: its gradients are DDP's business
    if step == 2 and rank == 1:
        fed.append(None)
    else:
        flat = torch.randn(sum(p.numel() for p in params), generator=g)
        flat *= norm / flat.norm()
        chunks = dict(zip(names, (c.view_as(p) for c, p in zip(flat.split([p.numel() for p in params]), params))))
        fed.append(chunks)
        loss = loss + sum((p * chunks[n]).sum() for n, p in zip(names, params))  # d loss / d p = chunks[n]
    loss.backward()
    assert all(p.grad is None for p in params) == (fed[-1] is None)
    tr.optimizer_step()
weights = torch.cat([p.detach().flatten() for p in params])
gathered = [torch.empty_like(weights) for _ in range(world)]
dist.all_gather(gathered, weights)
torch.save({"fed": fed, "before_step": before_step, "weights": weights, "gathered": gathered,
            "student": torch.cat([p.detach().flatten() for p in student.parameters()])}, out)
dist.barrier()
dist.destroy_process_group()
"""

WORLD = 2
TIMEOUT_S = 180  # a hang (a rank missing from a collective) fails the test instead of blocking the suite


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Run the two ranks; return what each recorded."""
    d = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": str(WORLD), "MASTER_ADDR": "127.0.0.1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    procs = []
    for r in range(WORLD):
        log = open(d / f"rank{r}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-c", WORKER, str(r), str(WORLD), str(d / "rendezvous"),
                                        str(d / f"rank{r}.pt")], stdout=log, stderr=subprocess.STDOUT, cwd=str(d),
                                       env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}), log))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for p, _ in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    logs = "\n".join(f"--- rank {r} (rc {p.returncode})\n" + (d / f"rank{r}.log").read_text()[-3000:]
                     for r, (p, _) in enumerate(procs))
    assert all(p.returncode == 0 for p, _ in procs), f"a rank failed or hung (> {TIMEOUT_S} s):\n{logs}"
    return [torch.load(d / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_method_gradients_are_averaged_across_ranks_then_clipped(ranks):
    """Guards against: method gradients left per-rank (not all-reduced), summed instead of averaged, clipped before
    averaging or not at all, and a rank whose KD terms were dropped skipping the all-reduce (a hang, or the others
    averaging without its zero gradient)."""
    from yolokd.engine.trainer import KDTrainer

    bound = KDTrainer.METHOD_MAX_NORM
    clipped_steps = []
    for step in range(3):
        fed = [rk["fed"][step] for rk in ranks]
        assert (fed[1] is None) == (step == 2)
        names = list(fed[0])
        zero = {n: torch.zeros_like(v) for n, v in fed[0].items()}
        mean = {n: sum((f or zero)[n] for f in fed) / WORLD for n in names}  # by hand; a missing rank counts as 0
        norm = torch.cat([v.flatten() for v in mean.values()]).norm().item()
        factor = min(1.0, bound / (norm + 1e-6))
        clipped_steps.append(factor < 1)
        for r, rk in enumerate(ranks):
            got = rk["before_step"][step]
            for n in names:
                assert torch.allclose(got[n], mean[n] * factor, rtol=1e-5, atol=1e-7), (step, r, n)
        for n in names:  # every rank steps with exactly the same gradient
            assert torch.equal(ranks[0]["before_step"][step][n], ranks[1]["before_step"][step][n]), (step, n)
    assert clipped_steps == [False, True, True]  # both regimes were exercised


def test_method_weights_stay_identical_across_ranks(ranks):
    """Guards against: ranks drifting apart in the method's weights (each stepping with its own gradient), which DDP
    would never notice since the method is outside the wrapped model."""
    for rk in ranks:  # all_gather inside each rank: the same vectors everywhere, equal bit for bit
        assert all(torch.equal(g, rk["gathered"][0]) for g in rk["gathered"])
    assert torch.equal(ranks[0]["weights"], ranks[1]["weights"])
    assert torch.equal(ranks[0]["student"], ranks[1]["student"])  # the DDP-wrapped student too (sanity of the harness)
    torch.manual_seed(0)  # the initial weights, rebuilt as the ranks did: 3 steps moved them
    from torch import nn

    from yolokd.methods import build_method

    nn.Linear(6, 4)
    init = torch.cat([p.detach().flatten() for p in build_method("mimic", [4, 8, 16], [8, 16, 32]).parameters()])
    assert not torch.equal(init, ranks[0]["weights"])
