"""Quantizable modules (``torch.ao.nn.quantizable``): float modules decomposed into observable
parts, for eager static quantization through the custom-module configs."""

from .activation import MultiheadAttention
from .rnn import LSTM, LSTMCell

__all__ = ["LSTM", "LSTMCell", "MultiheadAttention"]
