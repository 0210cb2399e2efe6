"""The contract v2 worked example (docs/fixed-point.md section 11), shared by the
golden-model test that checks it and the conv engine test that runs it in gateware."""

from __future__ import annotations

import numpy as np
from ttfs.contract.bundle import Bundle, Layer, conv2d_layer, default_lut


def conv_worked_example() -> Bundle:
    """The 1x3x4 network of docs/fixed-point.md section 11: a 2-channel 3x3 'same'
    convolution at T=4, R=2 with a 2x2 pool, then a 2-class readout."""
    weight = np.array([
        [[[0, 1, 0], [1, -2, 1], [0, 1, 0]]],
        [[[1, 0, 0], [0, 1, 0], [0, 0, -1]]],
    ])
    conv = conv2d_layer("conv1", (1, 3, 4), weight, np.array([-1, 0]), weight_bits=3, ramp_shift=1,
                        padding="same", pool_size=2)
    readout = Layer("out", "dense", 4, 2, 2, 0, True, np.array([[1, 0, -1, 0], [0, 1, 0, -1]]), np.array([0, 0]))
    return Bundle(time_steps=4, channels=1, height=3, width=4, lut=default_lut(4)[None, :],
                  layers=(conv, readout), classes=("a", "b"))


WORKED_IMAGE = np.array([[[255, 0, 64, 128], [0, 192, 0, 0], [128, 0, 255, 64]]], dtype=np.uint8)
