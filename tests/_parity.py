"""One model, two libraries: build it with each library's stubs (same weights), prepare,
calibrate and convert it with each library's x86 qconfig — the common scaffolding of the tests
that compare a converted ferroquant model with torch.ao's."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import ferroquant as fq
import torch
import torch.ao.quantization as tq


def convert_both(
    make: Callable[[tuple], torch.nn.Module],
    calib: list,
    *args: Any,
    fq_config: Optional[dict] = None,
    torch_config: Optional[dict] = None,
    fuse: Optional[list] = None,
) -> tuple:
    """(ferroquant's float model — the fp32 reference, ferroquant's converted model, torch.ao's
    converted model). ``make(stubs)`` builds the model with ``stubs = (QuantStub, DeQuantStub)``;
    ``calib`` are the calibration inputs (``args`` follow each); ``fuse`` lists ``fuse_modules``
    groups; the configs are the custom-module configs of each library."""
    torch.manual_seed(0)
    ours = make((fq.QuantStub, fq.DeQuantStub)).eval()
    theirs = make((tq.QuantStub, tq.DeQuantStub)).eval()
    theirs.load_state_dict(ours.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fuse:
            ours, theirs = fq.fuse_modules(ours, fuse), tq.fuse_modules(theirs, fuse)
        ours.qconfig, theirs.qconfig = fq.get_default_qconfig("x86"), tq.get_default_qconfig("x86")
        p_ours = fq.prepare(ours, prepare_custom_config_dict=fq_config)
        p_theirs = tq.prepare(theirs, prepare_custom_config_dict=torch_config)
        with torch.no_grad():
            for x in calib:
                p_ours(x, *args)
                p_theirs(x, *args)
        q_ours = fq.convert(p_ours, convert_custom_config_dict=fq_config)
        q_theirs = tq.convert(p_theirs, convert_custom_config_dict=torch_config)
    return ours, q_ours, q_theirs
