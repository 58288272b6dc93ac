"""Writes docs/coverage.md from the test suite's coverage parametrisation
(tests/test_coverage.py: every cell of the table is one of its test cases, which converts the
module for real and checks the page says what happened).

    python scripts/gen-coverage.py            # rewrite docs/coverage.md
    python scripts/gen-coverage.py --check    # exit 1 if docs/coverage.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_coverage import MODES, NOT_QUANTIZED, PAGE, ROWS, cell  # noqa: E402


def table() -> str:
    lines = ["| float module | " + " | ".join(MODES) + " |", "|---" * (len(MODES) + 1) + "|"]
    for name, _factory, _shape in ROWS:
        lines.append(f"| `nn.{name}` | " + " | ".join(cell(name, mode) for mode in MODES) + " |")
    return "\n".join(lines)


def page() -> str:
    return f"""# Coverage

Which float modules ferroquant quantizes, in which mode and with which weight granularity.
**Generated** from the test suite: every cell is a case of `tests/test_coverage.py`'s
parametrisation, which converts the module for real (static: eager PTQ with per-tensor weights,
`default_qconfig`, and per-channel weights, `get_default_qconfig("x86")`; dynamic:
`quantize_dynamic` with `default_dynamic_qconfig` and `per_channel_dynamic_qconfig`; QAT:
`prepare_qat`) and fails when this page does not say what happened; `python scripts/gen-coverage.py`
writes the page from those same cases, so it cannot drift from the code or the tests. A cell counts
when the module was swapped for a ferroquant quantized one (or, for modules that work on quantized
tensors as they are, when the quantized model runs) and its output is within a few quantization
steps of float. "{NOT_QUANTIZED}": not quantized in that mode (the module stays float in a converted
model, or, for modules that see quantized tensors, needs a `DeQuantStub` before it). Not in the
table: fp16 and int8 weight-only dynamic Linear / recurrent modules ([dynamic.md](dynamic.md)) and
the static LSTM / attention through the custom-module configs
([static.md](static.md#custom-modules-a-statically-quantized-lstm)). FX graph mode quantizes the
same modules, and functionals and `+` besides ([fx.md](fx.md)).

{table()}

Modules that "run on quantized tensors" keep their input's scale and zero point (max pooling,
ReLU, flatten, dropout) or compute their own in Rust (average pooling); see
[api.md](api.md) for functions and `QTensor` operations, and [migration.md](migration.md) for
what a model written for `torch.ao` needs today.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description="generate docs/coverage.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/coverage.md is stale")
    args = parser.parse_args()
    text = page()
    if args.check:
        if PAGE.read_text() != text:
            print("docs/coverage.md is out of date: run python scripts/gen-coverage.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
