"""Quantized BatchNorm2d / 3d and BNReLU2d / 3d against torch.ao's, same statistics and calibration."""

from __future__ import annotations

import io
import warnings

import ferroquant as fq
import pytest
import torch
from _parity import convert_both
from torch import nn


class Net(nn.Module):
    def __init__(self, stubs, dims: int, relu: bool) -> None:
        super().__init__()
        self.quant = stubs[0]()
        self.bn = nn.BatchNorm2d(5) if dims == 2 else nn.BatchNorm3d(5)
        self.relu = nn.ReLU() if relu else nn.Identity()
        self.dequant = stubs[1]()
        with torch.no_grad():
            self.bn.weight.normal_()
            self.bn.bias.normal_()
            self.bn.running_mean.normal_(0, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.relu(self.bn(self.quant(x))))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("relu", [False, True])
def test_batch_norm_matches_torch_ao(dims, relu):
    shape = (2, 5, 6, 7) if dims == 2 else (2, 5, 3, 4, 5)
    calib = [torch.randn(shape) * 2 for _ in range(3)]
    fuse = [["bn", "relu"]] if relu else None
    _, q_ours, q_theirs = convert_both(lambda stubs: Net(stubs, dims, relu), calib, fuse=fuse)
    x = torch.randn(shape) * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got, want = q_ours(x), q_theirs(x)
    kind = {(2, False): fq.nn.quantized.BatchNorm2d, (3, False): fq.nn.quantized.BatchNorm3d}
    kind.update({(2, True): fq.nn.intrinsic.quantized.BNReLU2d, (3, True): fq.nn.intrinsic.quantized.BNReLU3d})
    assert isinstance(q_ours.bn, kind[(dims, relu)])
    step = q_ours.bn.scale
    assert (got - want).abs().max() <= step + 1e-6 and float(((got - want).abs() > 1e-6).float().mean()) <= 0.01
    if relu:
        assert float(got.min()) >= 0.0
    # state_dict round trip
    buf = io.BytesIO()
    torch.save(q_ours.bn.state_dict(), buf)
    fresh = type(q_ours.bn)(5)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    q = q_ours.quant(x)
    assert torch.equal(fresh(q).int_repr(), q_ours.bn(q).int_repr())


def test_bad_inputs():
    bn = fq.nn.quantized.BatchNorm2d(3)
    with pytest.raises(TypeError, match="QuantStub"):
        bn(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"\[N, 3, \.\.\.\]"):
        bn(fq.quantize_per_tensor(torch.randn(1, 4, 2, 2), 0.1, 128, fq.quint8))
