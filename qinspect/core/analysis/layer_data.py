"""What PTQ steps learn from data: a layer's input as the quantized model computes it, and its
output as the float model does, batch by batch (`ptq.steps`' `LayerData`).

The quantized side is the plan's simulation (`Simulator`); weights and biases a step has already
changed are fed to it with `set_constant`, so each layer sees the earlier layers as they will be.
The batches are read once and kept (PTQ uses a few hundred samples at most).
"""
from __future__ import annotations

import numpy as np

from ..quant.encoding import Encoding
from .compare import _Batches, _float_session, _run_float
from .simulate import Simulator


class LayerData:
    def __init__(self, index, encodings: dict[str, Encoding], data, *, inputs, outputs, samples: int | None = None,
                 batch_size: int = 8, providers=None):
        """`inputs`: tensors to read from the quantized model; `outputs`: from the float model."""
        self.index = index
        self.feeds = [feeds for _, feeds, _ in _Batches(data, samples, batch_size)]
        self.samples = sum(next(iter(f.values())).shape[0] for f in self.feeds) if self.feeds else 0
        self.sim = Simulator(index, encodings, names=list(dict.fromkeys(inputs)), providers=providers)
        self._outputs = list(dict.fromkeys(outputs))
        self.float = _float_session(index, self._outputs, providers)

    def set_constant(self, name: str, value: np.ndarray) -> None:
        """Use this weight or bias in the quantized model from now on."""
        self.sim.set_constant(name, value)

    def set_encodings(self, encodings: dict[str, Encoding]) -> None:
        """Quantize with these encodings from now on (a step froze a new weight range)."""
        self.sim.set_encodings(encodings)

    def batches(self, quantized_input: str, float_output: str):
        """(quantized-model value of `quantized_input`, float-model value of `float_output`) per batch."""
        for feeds in self.feeds:
            x = self.sim.run(feeds, [quantized_input])[0]
            y = _run_float(self.float, feeds, [float_output])[float_output]
            yield x, y

    def close(self) -> None:
        self.sim.close()
        self.float = None
