"""Smoke test of an installed ferroquant wheel (run by scripts/test-wheel.sh from outside the source
tree): the package comes from the wheel, its version matches the metadata, every engine the CPU
offers is inside and gives the same bits, and the dynamic and static workflows run and round-trip
through state_dict and TorchScript.
"""

from __future__ import annotations

import copy
import importlib.metadata
import io
import os
import sys
from pathlib import Path

import ferroquant as fq
import torch
from torch import nn

expect_prefix = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else None
pkg = Path(fq.__file__).resolve().parent
print(f"ferroquant {fq.__version__} from {pkg}")
if expect_prefix is not None:
    assert expect_prefix in pkg.parents, f"ferroquant imported from {pkg}, not from the wheel's venv {expect_prefix}"
assert "/python/ferroquant" not in str(pkg), "imported the source tree, not the wheel"
assert fq.__version__ == importlib.metadata.version("ferroquant"), "extension and metadata versions differ"
for name in ("_core.pyi", "py.typed"):
    assert (pkg / name).is_file(), f"{name} missing from the installed package"

engines = list(fq.backends.supported_engines)
print(f"engines: {engines} (auto picks {fq.backends.current_engine()})")
machine = os.uname().machine
flags: set[str] = set()
for line in Path("/proc/cpuinfo").read_text().splitlines():
    if line.startswith("flags"):
        flags = set(line.split(":", 1)[1].split())
        break
expected = ["scalar"]
if machine == "x86_64":
    expected += ["avx2"] if {"avx2", "fma"} <= flags else []
    expected += ["avxvnni"] if {"avx_vnni", "avx2", "fma"} <= flags else []
    expected += ["avx512vnni"] if {"avx512_vnni", "avx512bw", "avx512f"} <= flags else []
missing = sorted(set(expected) - set(engines))
assert not missing, f"the CPU offers {missing} but the wheel does not run them"


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = fq.QuantStub()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()  # a module, so the converted model scripts
        self.fc = nn.Linear(16, 10)
        self.dequant = fq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn(self.conv(self.quant(x)))))
        return self.dequant(self.fc(self.flatten(x)))


torch.manual_seed(0)
model = Net().eval()
data = torch.randn(8, 3, 20, 20)
ref = model(data)

fused = fq.fuse_modules(copy.deepcopy(model), [["conv", "bn", "relu"]])
fused.qconfig = fq.get_default_qconfig("x86")
prepared = fq.prepare(fused)
prepared(data)
static = fq.convert(prepared)
dynamic = fq.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)

outs = {}
for engine in engines:
    fq.backends.engine = engine
    outs[engine] = (static(data), dynamic(data))
fq.backends.engine = "auto"
first = engines[0]
for engine in engines[1:]:
    for got, want in zip(outs[engine], outs[first]):
        assert torch.equal(got, want), f"engine {engine} differs from {first}"
cos = torch.nn.functional.cosine_similarity(outs[first][0].flatten(), ref.flatten(), dim=0).item()
assert cos > 0.99, f"static int8 vs fp32 cosine {cos}"
print(f"static and dynamic outputs identical on {len(engines)} engines; static cosine vs fp32 {cos:.5f}")

buf = io.BytesIO()
torch.save(static.state_dict(), buf)
buf.seek(0)
fresh = fq.fuse_modules(copy.deepcopy(model), [["conv", "bn", "relu"]])
fresh.qconfig = fq.get_default_qconfig("x86")
fresh = fq.prepare(fresh)
fresh(torch.randn(2, 3, 20, 20))  # any calibration: load_state_dict replaces every qparam
fresh = fq.convert(fresh)
fresh.load_state_dict(torch.load(buf))
assert torch.equal(fresh(data), static(data)), "state_dict round trip changed the output"
scripted = torch.jit.script(static)
assert torch.equal(scripted(data), static(data)), "TorchScript differs from eager"
print("state_dict round trip and torch.jit.script: identical outputs")
print("wheel smoke test passed")
