"""Random valid bundles and images, for property tests, benchmarks and hardware tests.

The generator aims at *interesting* networks: ramp shifts are chosen so that
hidden activations spread over 0..T (neither all silent nor all saturated),
biases are negative, zero and positive, and weights use their full range.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from sim.bundle import MAX_RAMP_SHIFT, Bundle, Layer, default_lut, validate

TIME_STEP_CHOICES = (2, 4, 8, 16, 32, 64, 128, 256)


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
        limit = 1 << (bits[index] - 1)
        density = weight_density if weight_density is not None else float(rng.uniform(0.3, 1.0))
        weight = rng.integers(-limit, limit, size=(outputs, inputs), dtype=np.int64)
        weight *= rng.random((outputs, inputs)) < density
        # Typical |V| for inputs spread over 0..T; a ramp R near V/T spreads
        # the outputs over 0..T as well.
        typical = max(1.0, math.sqrt(inputs * density) * limit / math.sqrt(3) * steps / 2)
        shift = shifts[index]
        if shift is None:
            guess = int(round(math.log2(max(1.0, typical / steps)))) + int(rng.integers(-1, 2))
            shift = min(max(guess, 0), MAX_RAMP_SHIFT)
        ramp = 1 << shift
        span = steps * ramp if not readout else int(typical)
        # Skewed positive: V is symmetric around 0, so an unbiased layer is half silent.
        bias = rng.integers(-span // 2, span + 1, size=outputs, dtype=np.int64)
        bias *= rng.random(outputs) < 0.8  # some zero biases
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
    classes = tuple(str(i) for i in range(sizes[-1])) if with_classes else None
    bundle = Bundle(
        time_steps=steps,
        channels=channels,
        height=input_shape[1],
        width=input_shape[2],
        lut=table,
        layers=tuple(layers),
        classes=classes,
        meta={"generator": "sim.random_bundle"},
    )
    validate(bundle)
    return bundle


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


__all__ = ["random_bundle", "random_images", "random_lut", "TIME_STEP_CHOICES"]
