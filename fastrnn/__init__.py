"""fastrnn: fused, drop-in replacements for torch.nn.LSTM, GRU and RNN."""
from fastrnn.backends import available_backends
from fastrnn.modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, convert

__version__ = "0.1.0"

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "available_backends", "convert",
           "__version__"]
