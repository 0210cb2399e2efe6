"""ttfs.hw.cycle_model against cycles measured in amaranth.sim, and event-driven timing."""

from __future__ import annotations

import numpy as np
import pytest
from ttfs.hw.core import NetworkCore
from ttfs.hw.cycle_model import predict_cycles
from ttfs.hw.errors import HardwareError
from ttfs.sim import golden
from ttfs.sim.random_bundle import random_bundle, random_conv_bundle, random_images
from ttfs.sim.verify.cycles import simulate_core

# Bound of the model's error when layers need several lane groups (G > 1);
# with G = 1 the model is exact.  Worst seen over 24 random configurations: 10.5 %.
GROUPED_TOLERANCE = 0.15


def measured_and_predicted(bundle, lanes, pixels_per_beat, images):
    """(latency per image measured alone in the core, predicted latency per image)."""
    core = NetworkCore(bundle, lanes, pixels_per_beat=pixels_per_beat)
    run = simulate_core(core, images, isolated=True)
    expected = golden.run(bundle, images)
    assert run.logits.tolist() == expected.logits.tolist()
    counts = [np.count_nonzero(layer, axis=1) for layer in expected.activations]
    predicted = [predict_cycles(bundle, lanes, pixels_per_beat, [int(c[i]) for c in counts]).latency
                 for i in range(len(images))]
    return run.cycles.tolist(), predicted


@pytest.mark.parametrize("seed", range(4))
def test_model_exact_with_one_group_per_layer(seed):
    """P >= every layer's width (G = 1): prediction == measurement, cycle for cycle."""
    rng = np.random.default_rng(500 + seed)
    sizes = [int(rng.integers(8, 40))] + [int(rng.integers(2, 16)) for _ in range(1 + seed % 3)]
    bundle = random_bundle(rng, sizes=sizes, time_steps=int(2 ** rng.integers(1, 6)), lut="default")
    lanes = max(sizes[1:]) + int(rng.integers(0, 3))
    images = random_images(rng, bundle, 3)
    measured, predicted = measured_and_predicted(bundle, lanes, int(rng.integers(1, 9)), images)
    assert measured == predicted


@pytest.mark.parametrize("seed, lanes", [(0, 1), (1, 2), (2, 3), (3, 8)])
def test_model_within_bound_with_lane_groups(seed, lanes):
    rng = np.random.default_rng(600 + seed)
    sizes = [int(rng.integers(16, 40)), int(rng.integers(9, 24)), int(rng.integers(2, 12))]
    bundle = random_bundle(rng, sizes=sizes, time_steps=8, lut="default")
    images = random_images(rng, bundle, 3)
    measured, predicted = measured_and_predicted(bundle, lanes, 4, images)
    for m, p in zip(measured, predicted):
        assert abs(p - m) <= GROUPED_TOLERANCE * m, (measured, predicted)


@pytest.mark.parametrize("seed, lanes", [(3, 8), (5, 2), (9, 2)])
def test_model_exact_for_conv_layers(seed, lanes):
    """Conv engines (one or two, G = 1 and G > 1) then the readout: exact cycle for cycle,
    except the first image after reset, which may wait for the slope clearing pass."""
    rng = np.random.default_rng(700 + seed)
    shape = (int(rng.integers(1, 3)), int(rng.integers(3, 8)), int(rng.integers(3, 8)))
    bundle = random_conv_bundle(rng, input_shape=shape, dense=[3] if seed % 2 else [4, 3],
                                time_steps=int(rng.choice([2, 4, 8])))
    images = random_images(rng, bundle, 3)
    measured, predicted = measured_and_predicted(bundle, lanes, 2, images)
    assert measured[1:] == predicted[1:]
    assert measured[0] >= predicted[0]


def test_fewer_input_spikes_take_fewer_cycles():
    """Event-driven: the same network on sparser images finishes sooner, as the model says."""
    rng = np.random.default_rng(7)
    bundle = random_bundle(rng, sizes=(64, 12, 4), input_shape=(1, 8, 8), time_steps=16, lut="default")
    dense = random_images(rng, bundle, 1, zero_fraction=0.1)
    sparse = dense.copy()
    sparse[:, :, 2:, :] = 0                          # three quarters of the pixels silenced
    silent = np.zeros_like(dense)
    images = np.concatenate([dense, sparse, silent])
    spikes = np.count_nonzero(golden.encode(bundle, images), axis=1)
    assert spikes[0] > spikes[1] > spikes[2] == 0
    measured, predicted = measured_and_predicted(bundle, 12, 8, images)
    assert measured[0] > measured[1] > measured[2]
    assert measured == predicted
    # A silent input costs only the input beats, T ticks and the pipeline (the
    # hidden layer may still fire from its biases).
    hidden_spikes = int(np.count_nonzero(golden.run(bundle, silent).activations[1]))
    # A one-cycle register slice in front of each layer; the readout's 4
    # classes on 4 lanes: an argmax tree of 2 levels.
    assert measured[2] == 8 + 3 + 1 + (16 + 7) + 1 + (hidden_spikes + 16) + 1 + 6 + 2


def test_model_interval_and_checks():
    bundle = random_bundle(3, sizes=(784, 340, 10), input_shape=(1, 28, 28), time_steps=16,
                           weight_bits=5, lut="default")
    prediction = predict_cycles(bundle, 340, 16, [150, 100])
    # 49 beats + 3, link, encoder window 166, 7 to fire, link, 116 fired,
    # readout 1 + 6, argmax of 10 lanes in 4 levels.
    assert prediction.latency == 49 + 3 + 1 + 166 + 7 + 1 + 116 + 1 + 6 + 4
    assert prediction.interval == 170                          # layer 1 takes the window + 4 closing cycles
    assert prediction.trace_interval == 150 + 16 + 100 + 16     # one trace beat per cycle
    with pytest.raises(HardwareError, match="spike_counts: 1 values"):
        predict_cycles(bundle, 340, 16, [150])
    with pytest.raises(HardwareError, match=r"spike_counts\[1\]: 341"):
        predict_cycles(bundle, 340, 16, [150, 341])


def test_bench_cycles_cli(tmp_path, bundle_dir, capsys):
    """`ttfs bench cycles` reports measured latency, the model and spike rates as JSON."""
    import json

    from ttfs.cli import main as cli

    out = tmp_path / "cycles.json"
    assert cli.main(["bench", "cycles", str(bundle_dir), "--lanes", "6", "--pixels-per-beat", "4",
                     "--images", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["lanes"] == 6 and report["pixels_per_beat"] == 4 and report["images"] == 3
    spread = report["cycles_per_image"]
    assert spread["min"] <= spread["median"] <= spread["max"]
    assert len(report["cycles_per_image_all"]) == 3
    # G = 1 for every layer of this 16-6-3 bundle: the model is exact.
    assert report["model_error_max"] == 0.0
    assert len(report["spikes_per_neuron"]) == 2
    assert "amaranth.sim" in report["simulator"]
    assert "cycles per image" in capsys.readouterr().out
    assert cli.main(["bench", "cycles", str(bundle_dir), "--lanes", "6", "--images", "0"]) == 2
