"""Quantized LSTM (torch: ``torch.ao.nn.quantized.LSTM``): the converted form of
:class:`ferroquant.nn.quantizable.LSTM` — quantized tensors in and out, gates on quantized Linear,
add / mul and the fixed-qparams sigmoid / tanh tables."""

from __future__ import annotations

from typing import Any

from ..quantizable import rnn as _quantizable

__all__ = ["LSTM"]


class LSTM(_quantizable.LSTM):
    """``ferroquant.nn.quantized.LSTM``: built by ``convert`` from an observed quantizable LSTM
    (``observed_to_quantized_custom_module_class``)."""

    _FLOAT_MODULE = _quantizable.LSTM  # type: ignore[assignment]

    def _get_name(self) -> str:
        return "QuantizedLSTM"

    @classmethod
    def from_float(cls, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "the quantized LSTM is made from an observed one: map nn.LSTM to ferroquant.nn.quantizable.LSTM in "
            "prepare's float_to_observed_custom_module_class and ferroquant.nn.quantizable.LSTM to "
            "ferroquant.nn.quantized.LSTM in convert's observed_to_quantized_custom_module_class"
        )

    @classmethod
    def from_observed(cls, other: Any) -> LSTM:
        from ...quantize import convert

        if not isinstance(other, _quantizable.LSTM):
            raise TypeError(f"quantized LSTM.from_observed expects a quantizable LSTM, got {type(other).__name__}")
        converted = convert(other, inplace=False, remove_qconfig=True)
        converted.__class__ = cls
        return converted
