"""``fuse_modules``: fold BatchNorm into the conv / linear before it and merge a following ReLU
(beyond torch.ao: also ReLU6 and Hardtanh(0, max), which quantize to the same clamp — see
``_relu_like``), as torch.ao does in eval mode (BN folded with ``torch.nn.utils.fusion``: W·γ/√(var+ε), the
rsqrt form; docs/numerics.md, "BatchNorm folding")."""

from __future__ import annotations

import copy
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .nn import intrinsic as nni

__all__ = ["fuse_modules", "fuse_modules_qat", "fuse_known_modules", "get_fuser_method"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONV_RELU = {nn.Conv1d: nni.ConvReLU1d, nn.Conv2d: nni.ConvReLU2d, nn.Conv3d: nni.ConvReLU3d}
_BN_RELU = {nn.BatchNorm2d: nni.BNReLU2d, nn.BatchNorm3d: nni.BNReLU3d}


def _need_eval(*mods: nn.Module) -> None:
    if any(m.training for m in mods):
        raise ValueError(
            "fuse_modules folds BatchNorm with its running statistics and needs the model in eval mode; call "
            "model.eval() first (for quantization-aware training, fuse a train-mode model with fuse_modules_qat)"
        )


def _conv_bn(conv: nn.Module, bn: nn.Module) -> nn.Module:
    _need_eval(conv, bn)
    return fuse_conv_bn_eval(conv, bn)


def _relu_like(act: nn.Module) -> nn.Module:
    """``act`` if its quantized form is a fused ReLU: ReLU, ReLU6 and Hardtanh(0, max). The fused
    module runs ``act`` itself while calibrating, so its output observer sees values in
    ``[0, max]``; the quantized module then clamps to ``[zero_point, quant_max]``, and
    ``quant_max`` (the observed maximum) is at most ``quantize(max)`` — the same clamp as
    ``act`` on the integers, in the conv's output stage."""
    if isinstance(act, nn.Hardtanh) and not isinstance(act, nn.ReLU6) and act.min_val != 0:
        raise NotImplementedError(
            f"fusing Hardtanh needs min_val=0 (a ReLU with an upper bound), got min_val={act.min_val}; keep it as "
            "a separate module"
        )
    return act


def _conv_bn_relu(conv: nn.Module, bn: nn.Module, relu: nn.Module) -> nn.Module:
    return _CONV_RELU[type(conv)](_conv_bn(conv, bn), _relu_like(relu))


def _conv_transpose_bn(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """BatchNorm folded into the transposed conv before it. torch's folding (used for
    ``groups == 1``, so the weights equal torch.ao's) scales the weight's dim 1 by one factor per
    output channel, which is wrong for ``groups > 1`` (dim 1 holds ``out / groups``): there each
    group's slice gets its own channels' factors, with the same formula."""
    _need_eval(conv, bn)
    if bn.num_features != conv.out_channels or not bn.track_running_stats:
        raise ValueError(
            f"cannot fuse {type(conv).__name__} ({conv.out_channels} output channels) with {bn}: it needs "
            f"{conv.out_channels} features and running statistics (track_running_stats=True)"
        )
    if conv.groups == 1:
        return fuse_conv_bn_eval(conv, bn, transpose=True)
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        rsqrt = torch.rsqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(rsqrt)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(rsqrt)
        factor = gamma * rsqrt
        g, w = conv.groups, conv.weight
        grouped = w.reshape(g, w.shape[0] // g, w.shape[1], *w.shape[2:])
        shape = (g, 1, w.shape[1]) + (1,) * (w.dim() - 2)
        fused.weight.copy_((grouped * factor.reshape(shape)).reshape(w.shape))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias = nn.Parameter((bias - bn.running_mean) * rsqrt * gamma + beta)
    return fused


def _conv_transpose_bn_qat(conv: nn.Module, bn: nn.Module) -> nn.Module:
    raise NotImplementedError(
        "fusing ConvTranspose + BatchNorm for quantization-aware training is not supported (nor in torch.ao); "
        "fuse in eval mode with fuse_modules for post-training quantization, or keep them apart"
    )


def _conv_relu(conv: nn.Module, relu: nn.Module) -> nn.Module:
    return _CONV_RELU[type(conv)](conv, _relu_like(relu))


def _linear_relu(linear: nn.Module, relu: nn.Module) -> nn.Module:
    return nni.LinearReLU(linear, _relu_like(relu))


def _linear_bn(linear: nn.Module, bn: nn.Module) -> nn.Module:
    _need_eval(linear, bn)
    return fuse_linear_bn_eval(linear, bn)


def _bn_relu(bn: nn.Module, relu: nn.Module) -> nn.Module:
    if type(bn) not in _BN_RELU:
        raise NotImplementedError(f"BN + ReLU fusion supports BatchNorm2d/3d, got {type(bn).__name__}")
    return _BN_RELU[type(bn)](bn, relu)


_CONV_BN_QAT = {nn.Conv1d: nni.ConvBn1d, nn.Conv2d: nni.ConvBn2d, nn.Conv3d: nni.ConvBn3d}
_CONV_BN_RELU_QAT = {nn.Conv1d: nni.ConvBnReLU1d, nn.Conv2d: nni.ConvBnReLU2d, nn.Conv3d: nni.ConvBnReLU3d}


def _check_bn(layer: nn.Module, bn: nn.Module) -> None:
    channels = getattr(layer, "out_channels", getattr(layer, "out_features", None))
    if bn.num_features != channels:
        raise ValueError(
            f"cannot fuse {type(layer).__name__} ({channels} output channels) with {type(bn).__name__} "
            f"({bn.num_features} features): they must match"
        )
    if not (bn.affine and bn.track_running_stats):
        raise ValueError(f"fusing needs a BatchNorm with affine=True and track_running_stats=True, got {bn}")


def _conv_bn_qat(conv: nn.Module, bn: nn.Module) -> nn.Module:
    _check_bn(conv, bn)
    return _CONV_BN_QAT[type(conv)](conv, bn)


def _conv_bn_relu_qat(conv: nn.Module, bn: nn.Module, relu: nn.Module) -> nn.Module:
    _check_bn(conv, bn)
    return _CONV_BN_RELU_QAT[type(conv)](conv, bn, _relu_like(relu))


def _linear_bn_qat(linear: nn.Module, bn: nn.Module) -> nn.Module:
    if not isinstance(bn, nn.BatchNorm1d):
        raise NotImplementedError(f"Linear + BN fusion for QAT needs BatchNorm1d, got {type(bn).__name__}")
    _check_bn(linear, bn)
    return nni.LinearBn1d(linear, bn)


_RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
_FUSERS: dict[tuple[type, ...], Callable[..., nn.Module]] = {}
for _c in _CONV:
    for _b in _BN:
        _FUSERS[(_c, _b)] = _conv_bn
        for _r in _RELU_LIKE:
            _FUSERS[(_c, _b, _r)] = _conv_bn_relu
    for _r in _RELU_LIKE:
        _FUSERS[(_c, _r)] = _conv_relu
for _t, _b in zip(_CONV_TRANSPOSE, _BN):
    _FUSERS[(_t, _b)] = _conv_transpose_bn
for _r in _RELU_LIKE:
    _FUSERS[(nn.Linear, _r)] = _linear_relu
for _b in _BN:
    _FUSERS[(nn.Linear, _b)] = _linear_bn
    _FUSERS[(_b, nn.ReLU)] = _bn_relu

# quantization-aware training (train mode): BatchNorm stays, inside the fused module, to be folded
# while training by the QAT modules (ferroquant.nn.intrinsic.qat)
_QAT_FUSERS: dict[tuple[type, ...], Callable[..., nn.Module]] = dict(_FUSERS)
for _c in _CONV:
    for _b in _BN:
        _QAT_FUSERS[(_c, _b)] = _conv_bn_qat
        for _r in _RELU_LIKE:
            _QAT_FUSERS[(_c, _b, _r)] = _conv_bn_relu_qat
for _b in _BN:
    _QAT_FUSERS[(nn.Linear, _b)] = _linear_bn_qat
for _t, _b in zip(_CONV_TRANSPOSE, _BN):
    _QAT_FUSERS[(_t, _b)] = _conv_transpose_bn_qat


def get_fuser_method(
    op_list: tuple[type, ...], additional_fuser_method_mapping: Optional[dict] = None, is_qat: bool = False
) -> Callable:
    mapping = {**(_QAT_FUSERS if is_qat else _FUSERS), **(additional_fuser_method_mapping or {})}
    fuser = mapping.get(tuple(op_list))
    if fuser is None:
        supported = ", ".join("[" + ", ".join(t.__name__ for t in k) + "]" for k in mapping)
        raise NotImplementedError(f"cannot fuse {[t.__name__ for t in op_list]}; supported: {supported}")
    return fuser


def fuse_known_modules(
    mod_list: Sequence[nn.Module], is_qat: bool = False, additional_fuser_method_mapping: Optional[dict] = None
) -> list[nn.Module]:
    """The fused module first, then ``nn.Identity`` for the others (so forward stays valid).
    ``is_qat``: the train-mode fusion of ``fuse_modules_qat`` (BatchNorm kept for training)."""
    fuser = get_fuser_method(tuple(type(m) for m in mod_list), additional_fuser_method_mapping, is_qat)
    fused = fuser(*mod_list)
    out: list[nn.Module] = [fused] + [nn.Identity() for _ in mod_list[1:]]
    # keep hooks of the last module on the fused one, as torch does
    for hook in mod_list[-1]._forward_hooks.values():
        fused.register_forward_hook(hook)
    return out


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise AttributeError(f"fuse_modules: the model has no submodule named {name!r}") from None


def _set(model: nn.Module, name: str, value: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, value)


def fuse_modules(
    model: nn.Module,
    modules_to_fuse: Union[Sequence[str], Sequence[Sequence[str]]],
    inplace: bool = False,
    fuser_func: Callable[..., list[nn.Module]] = fuse_known_modules,
    fuse_custom_config_dict: Optional[dict[str, Any]] = None,
) -> nn.Module:
    """Fuses each list of submodule names (e.g. ``[["conv1", "bn1", "relu1"], ["fc", "relu"]]``,
    nested names like ``"layer1.0.conv1"`` work): [Conv, BN], [Conv, BN, ReLU], [Conv, ReLU],
    [Linear, ReLU], [Linear, BN], [BN, ReLU] (1d/2d/3d); beyond torch.ao, ReLU6 or Hardtanh(0, max)
    in place of the ReLU after a conv or linear (quantized as a fused ReLU with the observed
    range)."""
    return _fuse(model, modules_to_fuse, inplace, fuser_func, fuse_custom_config_dict, is_qat=False)


def _fuse(
    model: nn.Module,
    modules_to_fuse: Union[Sequence[str], Sequence[Sequence[str]]],
    inplace: bool,
    fuser_func: Callable[..., list[nn.Module]],
    fuse_custom_config_dict: Optional[dict[str, Any]],
    is_qat: bool,
) -> nn.Module:
    if not inplace:
        model = copy.deepcopy(model)
    groups = [modules_to_fuse] if modules_to_fuse and isinstance(modules_to_fuse[0], str) else modules_to_fuse
    extra = (fuse_custom_config_dict or {}).get("additional_fuser_method_mapping")
    for names in groups:
        mods = [_get(model, n) for n in names]
        if fuser_func is fuse_known_modules:
            new = fuser_func(mods, is_qat=is_qat, additional_fuser_method_mapping=extra)
        else:
            new = fuser_func(mods)
        for n, m in zip(names, new):
            _set(model, n, m)
    return model


def fuse_modules_qat(
    model: nn.Module,
    modules_to_fuse: Union[Sequence[str], Sequence[Sequence[str]]],
    inplace: bool = False,
    fuser_func: Callable[..., list[nn.Module]] = fuse_known_modules,
    fuse_custom_config_dict: Optional[dict[str, Any]] = None,
) -> nn.Module:
    """``fuse_modules`` for quantization-aware training (model in train mode): [Conv, BN] and
    [Conv, BN, ReLU] become ``nn.intrinsic.ConvBn*d`` / ``ConvBnReLU*d`` and [Linear, BN]
    ``LinearBn1d``, keeping the BatchNorm, which ``prepare_qat``'s modules fold into the weight
    while training; [Conv, ReLU], [Linear, ReLU], [BN, ReLU] fuse as in ``fuse_modules``."""
    return _fuse(model, modules_to_fuse, inplace, fuser_func, fuse_custom_config_dict, is_qat=True)
