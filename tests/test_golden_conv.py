"""The golden model on conv2d layers (contract v2): worked example, a direct-loop
reference, exactness at the float limits, and agreement with the event model."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import ttfs.sim.golden as golden_module
from ttfs.contract.bundle import Bundle, Layer, conv2d_layer
from ttfs.sim.event_model import simulate
from ttfs.sim.golden import GoldenError, potential_bounds, run
from ttfs.sim.random_bundle import TIME_STEP_CHOICES, random_conv_bundle, random_images

from worked_examples import WORKED_IMAGE, conv_worked_example


def test_conv_worked_example():
    bundle = conv_worked_example()
    result = run(bundle, WORKED_IMAGE[None], pre_pool=True)
    assert result.activations[0].reshape(3, 4).tolist() == [[4, 0, 1, 2], [0, 3, 0, 0], [2, 0, 4, 1]]
    # V + Bias (Bias = -1, 0), then floor(/2) and clip to 0..4:
    assert result.pre_pool_activations[1].reshape(2, 3, 4).tolist() == [
        [[0, 3, 0, 0], [4, 0, 3, 1], [0, 4, 0, 0]],
        [[0, 0, 0, 1], [0, 1, 0, 0], [1, 0, 3, 0]],
    ]
    # 2x2 pool of the 3x4 maps: one row of two blocks; row 2 is dropped (floor(3/2) = 1).
    assert result.activations[1].tolist() == [[4, 3, 1, 1]]
    assert result.logits.tolist() == [[3, 2]] and result.classes.tolist() == [0]
    assert result.traces(0)[1].tolist() == [[0, 0], [1, 1], [3, 2], [3, 3]]
    assert result.pre_pool_traces(0)[1].tolist() == [
        [0, 4], [0, 9], [1, 1], [1, 6], [1, 22], [3, 7], [3, 15], [3, 17], [3, 20]
    ]
    # Neuron (0, 2, 1) fires at step 0 but lies in the dropped row: it never leaves the layer.
    assert result.neurons == [12, 24] and result.fired[1].tolist() == [9]
    assert result.spikes_per_neuron() == [7 / 12, 9 / 24]
    assert result.events_per_output() == [7 / 12, 4 / 4]
    events = simulate(bundle, WORKED_IMAGE)
    assert [t.tolist() for t in events.traces] == [t.tolist() for t in result.traces(0)]
    assert [t.tolist() for t in events.neuron_traces] == [t.tolist() for t in result.pre_pool_traces(0)]
    assert events.logits.tolist() == [3, 2] and events.label == 0
    bounds = potential_bounds(bundle)
    # conv1: T * sum|K| + |B| + (T+1) * R: channel 0: 4*6 + 1 + 10 = 35, channel 1: 4*3 + 0 + 10 = 22
    assert bounds[0].per_neuron.shape == (2, 3, 4)
    assert bounds[0].per_neuron[:, 0, 0].tolist() == [35, 22] and bounds[0].bits == 7


# ---------------------------------------------------------------------------
# an independent reference: the closed form by direct loops in float64


def loop_reference(bundle: Bundle, image: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The v2 closed form for one image by direct loops over every output (float64, no im2col)."""
    channels, height, width = bundle.input_shape
    current = np.array(
        [[[float(bundle.lut[c][image[c, y, x]]) for x in range(width)] for y in range(height)] for c in range(channels)]
    )
    activations = [current.reshape(-1)]
    steps = float(bundle.time_steps)
    for layer in bundle.layers:
        if layer.is_conv:
            kernel = layer.kernel_size
            pad = (kernel - 1) // 2 if layer.padding == "same" else 0
            out_channels, out_height, out_width = layer.conv_shape
            bias = np.broadcast_to(
                layer.bias if layer.bias.ndim == 3 else layer.bias[:, None, None], layer.conv_shape
            ).astype(np.float64)
            potential = np.zeros(layer.conv_shape)
            for o in range(out_channels):
                for y in range(out_height):
                    for x in range(out_width):
                        total = bias[o, y, x]
                        for c in range(current.shape[0]):
                            for ky in range(kernel):
                                for kx in range(kernel):
                                    row, column = y + ky - pad, x + kx - pad
                                    if 0 <= row < current.shape[1] and 0 <= column < current.shape[2]:
                                        total += float(layer.weight[o, c, ky, kx]) * current[c, row, column]
                        potential[o, y, x] = total
            fired = np.clip(np.floor(potential / 2.0**layer.ramp_shift), 0, steps)
            size = layer.pool_size
            _, rows, columns = layer.output_shape
            current = np.array([[[fired[o, r * size:(r + 1) * size, q * size:(q + 1) * size].max()
                                  for q in range(columns)] for r in range(rows)] for o in range(out_channels)])
            activations.append(current.reshape(-1))
            continue
        flat = current.reshape(-1)
        potential = layer.weight.astype(np.float64) @ flat + layer.bias
        if layer.readout:
            return activations, potential
        current = np.clip(np.floor(potential / 2.0**layer.ramp_shift), 0, steps)
        activations.append(current)
    raise AssertionError("a bundle ends in its readout")


REFERENCE_CASES = [
    # input shape, convs (out, k, padding, pool), dense, bias_per
    ((1, 7, 9), [(3, 3, "same", 2)], [4], "channel"),
    ((2, 8, 8), [(4, 5, "valid", 1)], [5, 3], "position"),
    ((3, 9, 6), [(2, 1, "same", 3), (3, 3, "same", 1)], [2], ["position", "channel"]),
    ((1, 11, 10), [(2, 7, "same", 4)], [3], "position"),
    ((2, 6, 7), [(5, 3, "valid", 2), (2, 3, "same", 2)], [2], "channel"),
]


@pytest.mark.parametrize("case", range(len(REFERENCE_CASES)))
def test_golden_equals_direct_loops(case):
    shape, convs, dense, bias_per = REFERENCE_CASES[case]
    rng = np.random.default_rng(100 + case)
    bundle = random_conv_bundle(rng, input_shape=shape, convs=convs, dense=dense, bias_per=bias_per, time_steps=16)
    images = random_images(rng, bundle, 4)
    result = run(bundle, images, pre_pool=True)
    for image in range(len(images)):
        reference, logits = loop_reference(bundle, images[image])
        for ours, theirs in zip(result.activations, reference, strict=True):
            assert ours[image].tolist() == theirs.astype(np.int64).tolist()
        assert result.logits[image].tolist() == logits.astype(np.int64).tolist()
    # The comparison is only meaningful if the conv neurons neither all fire nor all stay silent.
    neurons = result.pre_pool_activations[1]
    assert 0 < np.count_nonzero(neurons) < neurons.size


# ---------------------------------------------------------------------------
# golden == event model over many random conv networks


def test_random_conv_networks_agree_with_event_model():
    """500 random v2 networks (1-3 input channels, sides 3..16, 1-8 channels,
    kernels 1/3/5, 'same'/'valid', pools 1..4, per-channel and per-position
    biases, T 2..256, weight_bits 2..16, 1-2 conv layers then dense layers):
    the golden model equals the event model on the events leaving every layer,
    on every neuron before pooling, on the logits and on the class."""
    rng = np.random.default_rng(20261201)
    seen = {key: set() for key in ("kernel", "padding", "pool", "bias_per", "steps", "bits", "convs", "dense", "channels")}
    fired_partly = 0
    networks = 500
    for _ in range(networks):
        bundle = random_conv_bundle(rng)
        convs = [layer for layer in bundle.layers if layer.is_conv]
        seen["kernel"].update(layer.kernel_size for layer in convs)
        seen["padding"].update(layer.padding for layer in convs)
        seen["pool"].update(layer.pool_size for layer in convs)
        seen["bias_per"].update(layer.bias_per for layer in convs)
        seen["steps"].add(bundle.time_steps)
        seen["bits"].update(layer.weight_bits for layer in bundle.layers)
        seen["convs"].add(len(convs))
        seen["dense"].add(len(bundle.layers) - len(convs))
        seen["channels"].add(bundle.channels)
        images = random_images(rng, bundle, 2, zero_fraction=0.3)
        result = run(bundle, images, pre_pool=True)
        for image in range(len(images)):
            events = simulate(bundle, images[image])
            for event_trace, golden_trace in zip(events.traces, result.traces(image), strict=True):
                assert np.array_equal(event_trace, golden_trace)
            for event_trace, golden_trace in zip(events.neuron_traces, result.pre_pool_traces(image), strict=True):
                assert np.array_equal(event_trace, golden_trace)
            assert np.array_equal(events.logits, result.logits[image])
            assert events.label == result.classes[image]
        if 0 < np.count_nonzero(result.activations[1]) < result.activations[1].size:
            fired_partly += 1
    assert seen["kernel"] == {1, 3, 5} and seen["padding"] == {"same", "valid"}
    assert seen["pool"] == {1, 2, 3, 4} and seen["bias_per"] == {"channel", "position"}
    assert seen["steps"] == set(TIME_STEP_CHOICES) and seen["bits"] == set(range(2, 17))
    assert seen["convs"] == {1, 2} and seen["dense"] == {1, 2} and seen["channels"] == {1, 2, 3}
    # Meaningful only if the first conv layer neither all fires nor all stays silent, mostly.
    assert fired_partly > networks // 2


# ---------------------------------------------------------------------------
# exactness at the float32 / float64 limits


def _integer_potential(conv: Layer, activations: np.ndarray) -> np.ndarray:
    """V + Bias of a conv2d layer in pure int64 (no float): shift-and-add, (n, out, H_out, W_out)."""
    kernel = conv.kernel_size
    pad = (kernel - 1) // 2 if conv.padding == "same" else 0
    padded = np.pad(activations, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    _, out_height, out_width = conv.conv_shape
    potential = np.zeros((len(activations),) + conv.conv_shape, dtype=np.int64)
    for ky in range(kernel):
        for kx in range(kernel):
            window = padded[:, :, ky:ky + out_height, kx:kx + out_width]
            potential += np.einsum("nchw,oc->nohw", window, conv.weight[:, :, ky, kx])
    return potential + conv.neuron_bias()


@pytest.mark.parametrize("time_steps, channels, kernel, bits, dtype", [
    (256, 1, 1, 16, np.float32),  # bound 256 * 32767 + |B| + 257, just below 2**24
    (16, 2, 3, 8, np.float32),
    (256, 3, 5, 16, np.float64),
])
def test_extreme_conv_values_are_exact(time_steps, channels, kernel, bits, dtype):
    """Largest weights, odd biases and every input at T: the potentials (float32 or
    float64 im2col products) equal the int64 shift-and-add convolution."""
    rng = np.random.default_rng(time_steps + channels + kernel)
    limit = 1 << (bits - 1)
    bundle = random_conv_bundle(rng, input_shape=(channels, 6, 6), convs=[(3, kernel, "same", 2)], dense=[2],
                                time_steps=time_steps, weight_bits=bits, bias_per="position", lut="threshold")
    conv = bundle.layers[0]
    extreme = np.where(rng.random(conv.weight.shape) < 0.5, -limit, limit - 1)
    extreme[0] = limit - 1
    extreme[1] = -limit
    bias = rng.integers(-50, 50, size=conv.bias.shape) | 1  # odd: a float rounding to even would show
    conv = dataclasses.replace(conv, weight=extreme, bias=bias, ramp_shift=0)
    bundle = dataclasses.replace(bundle, layers=(conv, bundle.layers[1]))
    bound = potential_bounds(bundle)[0].bound
    assert (bound < 2**24) == (dtype is np.float32)
    if dtype is np.float32 and bits == 16:
        assert bound > 2**23  # just below the float32 limit
    compiled = golden_module._compile(bundle)[0]
    assert compiled.weight.dtype == dtype
    images = np.full((3,) + bundle.input_shape, 255, dtype=np.uint8)
    images[1] = rng.integers(0, 256, size=images.shape[1:], dtype=np.uint8)
    images[2] = 0
    activations = golden_module.encode(bundle, images).reshape(-1, *bundle.input_shape)
    expected = _integer_potential(conv, activations)
    potential = golden_module._convolve(activations.transpose(0, 2, 3, 1), compiled) + compiled.bias
    assert potential.transpose(0, 3, 1, 2).astype(np.int64).tolist() == expected.tolist()
    assert np.abs(expected).max() > bound // 2  # the test reaches the large values it is about
    result = run(bundle, images)
    fired = np.clip(expected, 0, time_steps)
    pooled = fired[:, :, :6, :6].reshape(3, 3, 3, 2, 3, 2).max(axis=(3, 5)).reshape(3, -1)
    assert np.array_equal(result.activations[1], pooled)
    readout = bundle.readout
    assert result.logits.tolist() == (pooled @ readout.weight.T + readout.bias).tolist()


def test_batches_do_not_change_results(monkeypatch):
    rng = np.random.default_rng(7)
    bundle = random_conv_bundle(rng, input_shape=(2, 9, 9), convs=[(4, 3, "same", 2), (3, 3, "valid", 1)], dense=[5])
    images = random_images(rng, bundle, 13)
    whole = run(bundle, images, pre_pool=True)
    # A patch budget of one image's largest im2col matrix: one image per batch.
    # conv1: 9*9 positions x 2*3*3 inputs; conv2: 2*2 positions x 4*3*3.
    per_image = 9 * 9 * 2 * 3 * 3
    monkeypatch.setattr(golden_module, "_PATCH_VALUES", per_image)
    assert golden_module._images_per_batch(bundle, 2048) == 1
    pieces = run(bundle, images, pre_pool=True)
    for ours, theirs in zip(whole.activations + whole.pre_pool_activations + whole.fired,
                            pieces.activations + pieces.pre_pool_activations + pieces.fired, strict=True):
        assert np.array_equal(ours, theirs)
    assert np.array_equal(whole.logits, pieces.logits)


def test_pre_pool_only_on_request():
    rng = np.random.default_rng(8)
    bundle = random_conv_bundle(rng, input_shape=(1, 8, 8), convs=[(2, 3, "same", 2), (2, 3, "same", 1)], dense=[3])
    images = random_images(rng, bundle, 3)
    plain = run(bundle, images)
    assert plain.pre_pool_activations is None
    with pytest.raises(GoldenError, match="pre_pool=True"):
        plain.pre_pool_traces(0)
    detailed = run(bundle, images, pre_pool=True)
    before = detailed.pre_pool_activations
    assert before[0] is detailed.activations[0]
    assert before[1].shape == (3, 2 * 8 * 8) and before[2] is detailed.activations[2]
    assert [layer.shape[1] for layer in before] == detailed.neurons == [64, 128, 32]
    assert detailed.fired[1].tolist() == np.count_nonzero(before[1], axis=1).tolist()
    # Pooling keeps each block's largest activation.
    maps = before[1].reshape(3, 2, 4, 2, 4, 2).max(axis=(3, 5)).reshape(3, -1)
    assert np.array_equal(maps, detailed.activations[1])
    assert detailed.spikes_per_neuron()[1] == pytest.approx(np.count_nonzero(before[1]) / before[1].size)


def test_run_checks_the_conv_bound(monkeypatch):
    rng = np.random.default_rng(9)
    bundle = random_conv_bundle(rng, input_shape=(1, 5, 5), convs=[(2, 3, "same", 1)], dense=[2], lut="threshold")
    real = golden_module.layer_potential_bounds
    monkeypatch.setattr(golden_module, "layer_potential_bounds", lambda layer, steps: real(layer, steps) * 0)
    with pytest.raises(GoldenError, match="conv1: potential exceeds its bound"):
        run(bundle, np.full((1, 1, 5, 5), 255, dtype=np.uint8))


def test_dense_after_conv_reads_channel_major():
    """A readout with one weight per input sees the pooled maps flattened (C, H, W)."""
    weight = np.zeros((2, 1, 1, 1), dtype=np.int64)
    weight[0, 0, 0, 0], weight[1, 0, 0, 0] = 1, 2
    conv = conv2d_layer("conv1", (1, 2, 3), weight, np.zeros(2, dtype=np.int64), weight_bits=3, ramp_shift=0,
                        padding="valid")
    selector = np.eye(12, dtype=np.int64)
    readout = Layer("out", "dense", 12, 12, 2, 0, True, selector, np.zeros(12, dtype=np.int64))
    lut = np.minimum(np.arange(256), 8)[None, :]
    bundle = Bundle(time_steps=8, channels=1, height=2, width=3, lut=lut, layers=(conv, readout))
    image = np.arange(6, dtype=np.uint8).reshape(1, 1, 2, 3)
    logits = run(bundle, image).logits[0]
    # channel 0 = a, channel 1 = min(2a, 8), each in row-major (y, x) order
    assert logits.tolist() == [0, 1, 2, 3, 4, 5, 0, 2, 4, 6, 8, 8]
    assert math.prod(conv.output_shape) == 12


# ---------------------------------------------------------------------------
# ttfs bench golden --bundle


def test_bench_golden_measures_a_given_bundle(tmp_path, capsys):
    from ttfs.cli.main import main
    from ttfs.contract.bundle import save_bundle

    bundle = random_conv_bundle(np.random.default_rng(3), input_shape=(1, 12, 12), convs=[(4, 3, "same", 2)],
                                dense=[10], time_steps=16, weight_bits=(5, 6))
    path = save_bundle(bundle, tmp_path / "conv")
    assert main(["bench", "golden", "--bundle", str(path), "--images", "64", "--json", str(tmp_path / "b.json")]) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["network"] == "1x12x12-4x6x6-10" and report["weight_bits"] == [5, 6]
    assert report["bundle"] == str(path) and report["images"] == 64 and report["threads"] == 1
    assert len(report["spikes_per_neuron"]) == 2
    assert "1x12x12-4x6x6-10 T=16 5/6-bit weights, one core" in capsys.readouterr().out


def test_bench_golden_refuses_a_broken_bundle_in_one_line(tmp_path, capsys):
    from ttfs.cli.main import main

    assert main(["bench", "golden", "--bundle", str(tmp_path / "absent"), "--images", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ttfs bench golden: error:") and "absent" in err[0]
