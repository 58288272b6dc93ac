"""Quantized LSTM (torch: ``torch.ao.nn.quantized.LSTM``): the converted form of
:class:`ferroquant.nn.quantizable.LSTM` — quantized tensors in and out, gates on quantized Linear,
add / mul and the fixed-qparams sigmoid / tanh tables."""

from __future__ import annotations

from ..quantizable import rnn as _quantizable
from ._custom import FromObserved

__all__ = ["LSTM"]


class LSTM(FromObserved, _quantizable.LSTM):
    """``ferroquant.nn.quantized.LSTM``: built by ``convert`` from an observed quantizable LSTM
    (``observed_to_quantized_custom_module_class``)."""

    _FLOAT_MODULE = _quantizable.LSTM  # type: ignore[assignment]
    _OBSERVED_NAME = "LSTM"

    def _get_name(self) -> str:
        return "QuantizedLSTM"
