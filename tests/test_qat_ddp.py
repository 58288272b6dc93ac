"""Quantization-aware training under DistributedDataParallel: two processes on localhost (gloo),
started here with torch.multiprocessing. The observer and fake-quant buffers stay in sync across
ranks (DDP broadcasts rank 0's buffers at each forward), training converges, and both ranks
convert to the same int8 model."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2
STEPS = 30


def _model():
    import ferroquant as fq

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quant = fq.QuantStub()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.relu = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d((3, 1))  # one value per band of rows
            self.flatten = nn.Flatten()
            self.fc = nn.Linear(24, 3)
            self.dequant = fq.DeQuantStub()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pool(self.relu(self.bn(self.conv(self.quant(x)))))
            return self.dequant(self.fc(self.flatten(x)))

    return Net


def _data(rank: int, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A separable 3-class problem (mean brightness of three image bands); each rank its own shard."""
    g = torch.Generator().manual_seed(100 + rank)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 6, 6, generator=g) * 0.3
    for c in range(3):
        x[y == c, :, 2 * c : 2 * c + 2, :] += 1.5
    return x, y


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    import ferroquant as fq
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)  # the same initial weights on both ranks
        model = fq.fuse_modules_qat(_model()().train(), [["conv", "bn", "relu"]])
        model.qconfig = fq.get_default_qat_qconfig("x86")
        prepared = fq.prepare_qat(model)
        ddp = DDP(prepared)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        x, y = _data(rank)
        losses = []
        for step in range(STEPS):
            i = (step * 16) % len(y)
            loss = nn.functional.cross_entropy(ddp(x[i : i + 16]), y[i : i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        # freeze: observers off, BN on running statistics; one more forward syncs the buffers
        prepared.apply(fq.disable_observer)
        prepared.apply(fq.nn.intrinsic.qat.freeze_bn_stats)
        with torch.no_grad():
            ddp(x[:4])
        prepared.eval()
        state = {k: v.clone() for k, v in prepared.state_dict().items()}
        qmodel = fq.convert(prepared)
        probe = _data(7, 32)[0]
        with torch.no_grad():
            out = qmodel(probe)
        xe, ye = _data(rank + 10, 256)
        with torch.no_grad():
            acc = float((qmodel(xe).argmax(1) == ye).float().mean())
        torch.save({"losses": losses, "state": state, "out": out, "acc": acc}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_qat_under_ddp_two_processes(tmp_path):
    init_file = str(tmp_path / "init")
    mp.spawn(_worker, args=(init_file, str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in range(WORLD))
    # the fake-quant scales / zero points, the observers' ranges and BN's running statistics agree
    synced = [k for k in r0["state"] if any(s in k for s in ("activation_post_process", "weight_fake_quant", "bn."))]
    assert any("activation_post_process.scale" in k for k in synced)
    for k in synced:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    for k in r0["state"]:  # and the trained weights (DDP averages the gradients)
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    # training converged on both ranks, and both convert to the same int8 model
    for r in (r0, r1):
        first, last = sum(r["losses"][:5]) / 5, sum(r["losses"][-5:]) / 5
        assert last < 0.5 * first, r["losses"]
        assert r["acc"] > 0.9, r["acc"]
    assert torch.equal(r0["out"], r1["out"])
