"""Random valid bundles and images, for property tests, benchmarks and hardware tests.

The generators aim at *interesting* networks: ramp shifts are chosen so that
hidden activations spread over 0..T (neither all silent nor all saturated),
biases are negative, zero and positive, and weights use their full range.
:func:`random_bundle` draws dense networks (contract v1),
:func:`random_conv_bundle` conv2d layers followed by dense ones (v2).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from ttfs.contract.bundle import (
    MAX_POOL_SIZE,
    MAX_RAMP_SHIFT,
    PADDINGS,
    Bundle,
    Layer,
    conv2d_layer,
    conv_output_size,
    default_lut,
    validate,
)

TIME_STEP_CHOICES = (2, 4, 8, 16, 32, 64, 128, 256)
# Kernel sizes and input sides random_conv_bundle draws when not given.
CONV_KERNEL_CHOICES = (1, 3, 5)
CONV_SIDES = (3, 16)
# How often each pool size 1..4 is drawn (where it fits): mostly none or 2x2.
_POOL_WEIGHTS = (3, 3, 1, 1)


def _per_layer(value, count: int, draw) -> list[int]:
    """None -> one random draw per layer; an int -> the same for all; a sequence -> as given."""
    if value is None:
        return [int(draw()) for _ in range(count)]
    if isinstance(value, (int, np.integer)):
        return [int(value)] * count
    values = [int(v) for v in value]
    if len(values) != count:
        raise ValueError(f"expected {count} per-layer values, got {len(values)}")
    return values


def _input_shape_for(size: int) -> tuple[int, int, int]:
    side = math.isqrt(size)
    return (1, side, side) if side * side == size else (1, 1, size)


def random_lut(rng: np.random.Generator, channels: int, time_steps: int, kind: str = "default") -> np.ndarray:
    """An input table (channels, 256) of integers in 0..T.

    ``kind``: "default" (the contract's table), "random" (any value, pixel 0
    silent), "threshold" (0 below a random pixel level, T from it on).
    """
    if kind == "default":
        return np.tile(default_lut(time_steps), (channels, 1))
    if kind == "random":
        lut = rng.integers(0, time_steps + 1, size=(channels, 256), dtype=np.int64)
        lut[:, 0] = 0
        return lut
    if kind == "threshold":
        levels = rng.integers(1, 256, size=(channels, 1))
        return np.where(np.arange(256)[None, :] >= levels, time_steps, 0).astype(np.int64)
    raise ValueError(f"unknown LUT kind {kind!r}")


def random_bundle(
    rng: np.random.Generator | int,
    sizes: Sequence[int] | None = None,
    time_steps: int | None = None,
    weight_bits: int | Sequence[int] | None = None,
    ramp_shifts: int | Sequence[int] | None = None,
    input_shape: tuple[int, int, int] | None = None,
    lut: str | None = None,
    weight_density: float | None = None,
    with_classes: bool = True,
) -> Bundle:
    """A random valid bundle.

    ``sizes`` lists the input size then every layer's outputs (the last is
    the readout), e.g. (784, 340, 10); by default 1 to 4 layers of small
    random widths.  ``input_shape`` (C, H, W) must multiply to ``sizes[0]``;
    by default a square single-channel image when ``sizes[0]`` is a square,
    else (1, 1, sizes[0]).  ``time_steps``, ``weight_bits``, ``ramp_shifts``
    (per layer, int or sequence), ``lut`` ("default", "random",
    "threshold") and ``weight_density`` (fraction of non-zero weights) are
    drawn at random when not given.  ``rng`` may be a seed.
    """
    rng = np.random.default_rng(rng)
    if sizes is None:
        depth = int(rng.integers(1, 5))
        if input_shape is None:
            input_shape = (int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        sizes = [int(np.prod(input_shape))] + [int(rng.integers(1, 25)) for _ in range(depth)]
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2:
        raise ValueError("sizes needs the input size and at least one layer")
    if input_shape is None:
        input_shape = _input_shape_for(sizes[0])
    if int(np.prod(input_shape)) != sizes[0]:
        raise ValueError(f"input_shape {input_shape} does not hold {sizes[0]} inputs")
    steps = int(time_steps) if time_steps is not None else int(rng.choice(TIME_STEP_CHOICES))
    count = len(sizes) - 1
    bits = _per_layer(weight_bits, count, lambda: rng.integers(2, 17))
    lut_kind = lut if lut is not None else str(rng.choice(["default", "random", "threshold"]))
    channels = input_shape[0]
    table = random_lut(rng, channels, steps, lut_kind)

    # None: each layer's shift is chosen from its weights below.
    shifts = [None] * count if ramp_shifts is None else _per_layer(ramp_shifts, count, None)
    layers = []
    for index in range(count):
        inputs, outputs = sizes[index], sizes[index + 1]
        readout = index == count - 1
        weight, bias, shift = _draw_parameters(
            rng, (outputs, inputs), bits[index], steps, shifts[index], readout, weight_density, (outputs,)
        )
        layers.append(
            Layer(
                name=f"fc{index + 1}" if not readout else "out",
                kind="dense",
                inputs=inputs,
                outputs=outputs,
                weight_bits=bits[index],
                ramp_shift=shift,
                readout=readout,
                weight=weight,
                bias=bias,
            )
        )
    return _finish(steps, input_shape, table, layers, with_classes)


def _draw_parameters(
    rng: np.random.Generator,
    weight_shape: tuple[int, ...],
    bits: int,
    steps: int,
    shift: int | None,
    readout: bool,
    weight_density: float | None,
    bias_shape: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray, int]:
    """Weights of ``weight_shape`` (outputs first, the fan-in after), biases of
    ``bias_shape`` and the ramp shift (drawn to suit the weights when None)."""
    fan_in = math.prod(weight_shape[1:])
    limit = 1 << (bits - 1)
    density = weight_density if weight_density is not None else float(rng.uniform(0.3, 1.0))
    weight = rng.integers(-limit, limit, size=weight_shape, dtype=np.int64)
    weight *= rng.random(weight_shape) < density
    # Typical |V| for inputs spread over 0..T; a ramp R near V/T spreads
    # the outputs over 0..T as well.
    typical = max(1.0, math.sqrt(fan_in * density) * limit / math.sqrt(3) * steps / 2)
    if shift is None:
        guess = int(round(math.log2(max(1.0, typical / steps)))) + int(rng.integers(-1, 2))
        shift = min(max(guess, 0), MAX_RAMP_SHIFT)
    ramp = 1 << shift
    span = steps * ramp if not readout else int(typical)
    # Skewed positive: V is symmetric around 0, so an unbiased layer is half silent.
    bias = rng.integers(-span // 2, span + 1, size=bias_shape, dtype=np.int64)
    bias *= rng.random(bias_shape) < 0.8  # some zero biases
    return weight, bias, shift


def _finish(
    steps: int, input_shape: tuple[int, int, int], table: np.ndarray, layers: list[Layer], with_classes: bool
) -> Bundle:
    """The validated bundle of the drawn layers (classes "0", "1", ... when ``with_classes``)."""
    outputs = layers[-1].outputs
    classes = tuple(str(i) for i in range(outputs)) if with_classes else None
    bundle = Bundle(
        time_steps=steps,
        channels=input_shape[0],
        height=input_shape[1],
        width=input_shape[2],
        lut=table,
        layers=tuple(layers),
        classes=classes,
        meta={"generator": "ttfs.sim.random_bundle"},
    )
    validate(bundle)
    return bundle


def _random_conv_specs(rng: np.random.Generator, shape: tuple[int, int, int]) -> list[tuple[int, int, str, int]]:
    """One or two random (out_channels, kernel_size, padding, pool_size) that fit ``shape``."""
    specs = []
    for _ in range(int(rng.integers(1, 3))):
        _, height, width = shape
        kernel = int(rng.choice(CONV_KERNEL_CHOICES))
        padding = str(rng.choice(PADDINGS)) if kernel <= min(height, width) else "same"
        out_height, out_width = (conv_output_size(side, kernel, padding) for side in (height, width))
        fitting = [size for size in range(1, MAX_POOL_SIZE + 1) if size <= min(out_height, out_width)]
        weights = np.array(_POOL_WEIGHTS[: len(fitting)], dtype=float)
        pool = int(rng.choice(fitting, p=weights / weights.sum()))
        channels = int(rng.integers(1, 9))
        specs.append((channels, kernel, padding, pool))
        shape = (channels, out_height // pool, out_width // pool)
    return specs


def random_conv_bundle(
    rng: np.random.Generator | int,
    input_shape: tuple[int, int, int] | None = None,
    convs: Sequence[tuple[int, int, str, int]] | None = None,
    dense: Sequence[int] | None = None,
    time_steps: int | None = None,
    weight_bits: int | Sequence[int] | None = None,
    ramp_shifts: int | Sequence[int] | None = None,
    bias_per: str | Sequence[str] | None = None,
    lut: str | None = None,
    weight_density: float | None = None,
    with_classes: bool = True,
) -> Bundle:
    """A random valid version-2 bundle: conv2d layers, then dense layers ending in the readout.

    ``input_shape`` (C, H, W) is drawn with C in 1..3 and H, W in 3..16 when
    not given.  ``convs`` lists each conv2d layer as (out_channels,
    kernel_size, padding, pool_size); by default one or two layers with 1..8
    channels, kernels 1, 3 or 5, 'same' or 'valid' and pools 1..4 where they
    fit (mostly 1 and 2).  ``dense`` lists the outputs of the dense layers
    after them, the last being the readout; by default zero or one hidden
    layer and a readout of 2..10 classes.  ``bias_per`` ("channel",
    "position", or one per conv2d layer) is drawn per layer when not given.
    ``time_steps``, ``weight_bits`` and ``ramp_shifts`` (per layer, convs
    then dense), ``lut`` and ``weight_density`` as :func:`random_bundle`.
    """
    rng = np.random.default_rng(rng)
    if input_shape is None:
        low, high = CONV_SIDES
        input_shape = (int(rng.integers(1, 4)), int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1)))
    input_shape = tuple(int(size) for size in input_shape)
    specs = _random_conv_specs(rng, input_shape) if convs is None else [tuple(spec) for spec in convs]
    if dense is None:
        dense = [int(rng.integers(1, 17)) for _ in range(int(rng.integers(0, 2)))] + [int(rng.integers(2, 11))]
    dense = [int(outputs) for outputs in dense]
    if not specs or not dense:
        raise ValueError("random_conv_bundle needs at least one conv2d layer and the readout")
    steps = int(time_steps) if time_steps is not None else int(rng.choice(TIME_STEP_CHOICES))
    count = len(specs) + len(dense)
    bits = _per_layer(weight_bits, count, lambda: rng.integers(2, 17))
    shifts = [None] * count if ramp_shifts is None else _per_layer(ramp_shifts, count, None)
    if bias_per is None or isinstance(bias_per, str):
        per = [bias_per if bias_per is not None else str(rng.choice(["channel", "position"])) for _ in specs]
    else:
        per = [str(value) for value in bias_per]
        if len(per) != len(specs):
            raise ValueError(f"expected {len(specs)} bias_per values, got {len(per)}")
    lut_kind = lut if lut is not None else str(rng.choice(["default", "random", "threshold"]))
    table = random_lut(rng, input_shape[0], steps, lut_kind)

    layers: list[Layer] = []
    shape = input_shape
    for index, (channels, kernel, padding, pool) in enumerate(specs):
        conv_shape = (channels, conv_output_size(shape[1], kernel, padding), conv_output_size(shape[2], kernel, padding))
        bias_shape = (channels,) if per[index] == "channel" else conv_shape
        weight, bias, shift = _draw_parameters(
            rng, (channels, shape[0], kernel, kernel), bits[index], steps, shifts[index], False, weight_density,
            bias_shape,
        )
        layer = conv2d_layer(
            f"conv{index + 1}", shape, weight, bias, weight_bits=bits[index], ramp_shift=shift,
            padding=padding, pool_size=pool,
        )
        layers.append(layer)
        shape = layer.output_shape
    inputs = layers[-1].outputs
    for position, outputs in enumerate(dense):
        index = len(specs) + position
        readout = position == len(dense) - 1
        weight, bias, shift = _draw_parameters(
            rng, (outputs, inputs), bits[index], steps, shifts[index], readout, weight_density, (outputs,)
        )
        layers.append(
            Layer(
                name="out" if readout else f"fc{position + 1}", kind="dense", inputs=inputs, outputs=outputs,
                weight_bits=bits[index], ramp_shift=shift, readout=readout, weight=weight, bias=bias,
            )
        )
        inputs = outputs
    return _finish(steps, input_shape, table, layers, with_classes)


def random_images(
    rng: np.random.Generator | int, bundle: Bundle, count: int, zero_fraction: float | None = None
) -> np.ndarray:
    """``count`` random uint8 images (N, C, H, W) for ``bundle``.

    A fraction of the pixels (random per image unless ``zero_fraction`` is
    given) is 0, like the background of MNIST; the first image of a batch of
    three or more is all zeros, the silent-input edge case.
    """
    rng = np.random.default_rng(rng)
    shape = (count, bundle.channels, bundle.height, bundle.width)
    images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    fractions = (
        np.full(count, zero_fraction) if zero_fraction is not None else rng.uniform(0.0, 0.9, size=count)
    )
    zeros = rng.random(shape) < fractions[:, None, None, None]
    images[zeros] = 0
    if count >= 3:
        images[0] = 0
    return images


__all__ = ["random_bundle", "random_conv_bundle", "random_images", "random_lut", "TIME_STEP_CHOICES"]
