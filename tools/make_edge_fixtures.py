#!/usr/bin/env python3
"""Generate the edge-case fixture bundles under fixtures/bundles/edge-*/.

Each fixture is a small valid bundle (input 1x4x4 or 3x2x2) that exercises
one corner of contract v1, plus ``vectors.npz``: a few uint8 input images
and the golden model's results for them, so hardware tests can compare
against fixed numbers without running Python's golden model.

``vectors.npz`` holds:
  images          uint8 (N, C, H, W)
  activations_K   int64 (N, width) for spiking layer K (0 = input encoder)
  logits          int64 (N, classes)
  classes         int64 (N,)

The output is seeded and byte-for-byte reproducible (fixed zip timestamps):
run ``python tools/make_edge_fixtures.py`` and ``git status`` shows no change.
Every fixture is checked to really show its edge before it is written.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from ttfs.cli.tool_parsers import make_edge_fixtures_parser
from ttfs.contract.bundle import Bundle, npz_bytes, save_bundle
from ttfs.sim.event_model import run_events
from ttfs.sim.golden import GoldenResult, run
from ttfs.sim.random_bundle import random_bundle, random_images, random_lut

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "fixtures" / "bundles"
IMAGES_PER_FIXTURE = 6


@dataclass
class Fixture:
    """A fixture bundle, its input images, and the check that it shows its edge."""

    name: str
    description: str
    bundle: Bundle
    images: np.ndarray
    check: Callable[[Bundle, GoldenResult], bool]


def _replace_layer(bundle: Bundle, index: int, **changes) -> Bundle:
    layers = list(bundle.layers)
    layers[index] = dataclasses.replace(layers[index], **changes)
    return dataclasses.replace(bundle, layers=tuple(layers))


def _images(rng: np.random.Generator, bundle: Bundle) -> np.ndarray:
    # random_images makes image 0 all zeros: the silent input is in every fixture.
    return random_images(rng, bundle, IMAGES_PER_FIXTURE)


def _hidden_partly_firing(bundle: Bundle, result: GoldenResult) -> bool:
    hidden = result.activations[1:]
    return all(0 < np.count_nonzero(a) < a.size for a in hidden)


def fixture_t2(rng) -> Fixture:
    bundle = random_bundle(rng, sizes=(16, 8, 4), time_steps=2, weight_bits=4, lut="default")
    bias = bundle.layers[0].bias.copy()
    bias[0] = 4 * bundle.layers[0].ramp  # one neuron that reaches a = T = 2
    bundle = _replace_layer(bundle, 0, bias=bias)
    return Fixture(
        "edge-t2", "T=2, the shortest window: activations 0, 1, 2 only (spikes at steps 0 and 1).",
        bundle, _images(rng, bundle),
        lambda b, r: _hidden_partly_firing(b, r) and set(np.unique(r.activations[1])) == {0, 1, 2},
    )


def fixture_t256(rng) -> Fixture:
    bundle = random_bundle(rng, sizes=(16, 6, 3), time_steps=256, weight_bits=8, lut="default")
    images = _images(rng, bundle)
    images[1, 0, 0, :2] = 255  # pixel 255 encodes to a = 256: a spike at step 0
    return Fixture(
        "edge-t256", "T=256, the longest window: the LUT reaches 256 (stored as uint16), "
        "activations need 9 bits.",
        bundle, images,
        lambda b, r: _hidden_partly_firing(b, r) and r.activations[0].max() == 256,
    )


def fixture_wb2(rng) -> Fixture:
    bundle = random_bundle(rng, sizes=(16, 10, 4), time_steps=16, weight_bits=2, lut="default", weight_density=1.0)
    return Fixture(
        "edge-wb2", "weight_bits=2 in every layer: weights only -2, -1, 0, 1.",
        bundle, _images(rng, bundle),
        lambda b, r: _hidden_partly_firing(b, r)
        and set(np.unique(b.layers[0].weight)) == {-2, -1, 0, 1},
    )


def fixture_wb16(rng) -> Fixture:
    bundle = random_bundle(rng, sizes=(16, 5, 3), time_steps=64, weight_bits=16, lut="default")
    weight = bundle.layers[0].weight.copy()
    weight[0, 0], weight[1, 1] = -(2**15), 2**15 - 1
    bundle = _replace_layer(bundle, 0, weight=weight)
    return Fixture(
        "edge-wb16", "weight_bits=16 with the extreme weights -32768 and 32767 and a large "
        "ramp_shift (potentials need about 27 bits).",
        bundle, _images(rng, bundle),
        lambda b, r: _hidden_partly_firing(b, r) and b.layers[0].ramp_shift >= 10,
    )


def fixture_bias(rng) -> Fixture:
    bundle = random_bundle(rng, sizes=(16, 8, 3), time_steps=8, weight_bits=6, lut="default")
    ramp = bundle.layers[0].ramp
    # zero, slightly negative, very negative (never fires), and negative readout biases
    hidden_bias = np.array([0, 0, -ramp, -3 * ramp, -100 * ramp * 8, -1, 0, -ramp // 2 - 1])
    bundle = _replace_layer(bundle, 0, bias=hidden_bias)
    bundle = _replace_layer(bundle, 1, bias=np.array([-5, 0, -40]))
    return Fixture(
        "edge-bias", "Negative and zero biases: zero, just below zero, a few ramps below, and one "
        "so negative that neuron 4 never fires; negative and zero readout biases.",
        bundle, _images(rng, bundle),
        lambda b, r: (r.activations[1][:, 4] == 0).all() and np.count_nonzero(r.activations[1]) > 0,
    )


def fixture_silent(rng) -> Fixture:
    bundle = random_bundle(rng, sizes=(16, 6, 5, 3), time_steps=16, weight_bits=5)
    lut = random_lut(rng, 1, 16, "threshold")
    lut[0, :200] = 0  # only very bright pixels spike
    bundle = dataclasses.replace(bundle, lut=lut)
    bundle = _replace_layer(bundle, 1, bias=np.full(5, -(10**6)))
    images = _images(rng, bundle)
    images[1] = 150  # bright-ish but under the threshold: silent input
    return Fixture(
        "edge-silent", "Silence: all-zero images and images below the LUT threshold give no input "
        "spikes, and the second hidden layer never fires (large negative biases), so the readout "
        "sees an empty trace and its logits equal its biases.",
        bundle, images,
        lambda b, r: (r.activations[0][:2] == 0).all()
        and (r.activations[2] == 0).all()
        and (r.logits == b.readout.bias).all(),
    )


def fixture_saturated(rng) -> Fixture:
    bundle = random_bundle(rng, sizes=(16, 8, 4), time_steps=16, weight_bits=4, lut="default")
    ramp = bundle.layers[0].ramp
    bias = np.full(8, 40 * 16 * ramp)
    bias[-2:] = 0  # two ordinary neurons beside the saturated ones
    bundle = _replace_layer(bundle, 0, bias=bias)
    return Fixture(
        "edge-saturated", "Saturation: large positive biases push six of eight hidden neurons to "
        "a = T (spike at step 0) for every image, even the all-zero one.",
        bundle, _images(rng, bundle),
        lambda b, r: (r.activations[1][:, :6] == b.time_steps).all(),
    )


def fixture_ties(rng) -> Fixture:
    bundle = random_bundle(rng, sizes=(16, 6, 4), time_steps=8, weight_bits=5, lut="default")
    readout = bundle.readout
    weight = readout.weight.copy()
    weight[1] = weight[3] = np.abs(weight[0]) + 1
    weight[2] = weight[0]
    bias = np.array([0, 3, 0, 3])
    bundle = _replace_layer(bundle, 1, weight=weight, bias=bias)
    return Fixture(
        "edge-ties", "Readout ties: classes 1 and 3 have identical weights and biases (and always "
        "lead), classes 0 and 2 too; the answer must be the smaller index, 1.",
        bundle, _images(rng, bundle),
        lambda b, r: (r.classes == 1).all() and (r.logits[:, 1] == r.logits[:, 3]).all(),
    )


def fixture_deep(rng) -> Fixture:
    bundle = random_bundle(
        rng, sizes=(12, 9, 7, 6, 4), time_steps=32, weight_bits=(7, 6, 5, 8),
        ramp_shifts=(4, 3, 0, 0), input_shape=(3, 2, 2), lut="random",
    )
    return Fixture(
        "edge-deep", "Depth 4 (three hidden layers), three input channels with their own random "
        "LUTs (channel-major flattening), ramp_shift 0 in the last hidden layer.",
        bundle, _images(rng, bundle),
        lambda b, r: all(np.count_nonzero(a) > 0 for a in r.activations),
    )


FIXTURES = (
    fixture_t2, fixture_t256, fixture_wb2, fixture_wb16, fixture_bias,
    fixture_silent, fixture_saturated, fixture_ties, fixture_deep,
)


def build_fixtures(seed: int = 2026) -> list[Fixture]:
    """Build every fixture from one seed (each gets its own child generator)."""
    children = np.random.SeedSequence(seed).spawn(len(FIXTURES))
    return [make(np.random.default_rng(child)) for make, child in zip(FIXTURES, children)]


def vectors_bytes(bundle: Bundle, images: np.ndarray, result: GoldenResult) -> bytes:
    """The ``vectors.npz`` content for a fixture."""
    arrays = {"images": images}
    for index, activations in enumerate(result.activations):
        arrays[f"activations_{index}"] = activations
    arrays["logits"] = result.logits
    arrays["classes"] = result.classes
    return npz_bytes(arrays)


def write_fixtures(out_dir: Path, seed: int = 2026) -> list[Path]:
    """Write every fixture bundle with its vectors.npz into ``out_dir``."""
    written = []
    for fixture in build_fixtures(seed):
        result = run(fixture.bundle, fixture.images)
        if not fixture.check(fixture.bundle, result):
            raise SystemExit(f"{fixture.name}: the generated bundle does not show its edge case")
        for image in range(len(fixture.images)):  # the literal model must agree before we commit
            traces, logits, label = run_events(fixture.bundle, fixture.images[image])
            assert all(np.array_equal(a, b) for a, b in zip(traces, result.traces(image), strict=True))
            assert np.array_equal(logits, result.logits[image]) and label == result.classes[image]
        bundle = dataclasses.replace(
            fixture.bundle, meta={"fixture": fixture.name, "description": fixture.description}
        )
        extra = {"vectors.npz": vectors_bytes(bundle, fixture.images, result)}
        written.append(save_bundle(bundle, out_dir / fixture.name, extra_files=extra))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = make_edge_fixtures_parser(__doc__, DEFAULT_OUT)
    args = parser.parse_args(argv)
    for path in write_fixtures(args.out, args.seed):
        size = sum(p.stat().st_size for p in path.iterdir())
        print(f"{path} ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
