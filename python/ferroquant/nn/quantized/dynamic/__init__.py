"""Dynamic quantized modules (``torch.ao.nn.quantized.dynamic``)."""

from ..weight_only import Float16Linear
from .activation import MultiheadAttention
from .linear import Linear
from .rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNBase, RNNCell, RNNCellBase

__all__ = [
    "Linear",
    "Float16Linear",
    "LSTM",
    "GRU",
    "RNN",
    "LSTMCell",
    "GRUCell",
    "RNNCell",
    "RNNBase",
    "RNNCellBase",
    "MultiheadAttention",
]
