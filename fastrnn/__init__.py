"""fastrnn: fused, drop-in replacements for torch.nn.LSTM, GRU and RNN."""
from fastrnn.backends import available_backends
from fastrnn.modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, convert

__version__ = "0.1.0"


def empty_cache() -> int:
    """Release the large CPU scratch buffers (>= 32 MiB) the `cpp` backend keeps mapped between
    calls so that a loop maps and zeroes them once (at most FASTRNN_SCRATCH_CACHE_MB, default
    1024).  Returns the bytes released; 0 where the cpp backend is not loaded."""
    import sys
    ext = sys.modules.get("fastrnn._ext")
    return int(ext.empty_scratch_cache()) if ext is not None else 0


__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "available_backends", "convert", "empty_cache",
           "__version__"]

# User-defined and LayerNorm cells, fused by generated Numba kernels (fastrnn/custom.py).
from fastrnn.custom import CellDef, CustomRNN, LayerNormGRU, LayerNormLSTM, UnsupportedCellError  # noqa: E402

__all__ += ["CellDef", "CustomRNN", "LayerNormLSTM", "LayerNormGRU", "UnsupportedCellError"]

# One frame per call, state kept between calls (fastrnn/stream.py; its numba kernel loads on first use).
from fastrnn.stream import Stream  # noqa: E402

__all__ += ["Stream"]
