"""Hardware fine-tuning: noise, time and weight quantisation, low latency (ttfs.sw.finetune).

The building blocks are checked exactly (grids, power-of-two scales,
straight-through gradients, jitter that leaves silent neurons silent,
window shrinking); the fine-tunings themselves run on a tiny conv network
trained in a second on a synthetic four-class task, and must recover
accuracy that the imperfection took away.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from ttfs.sw import finetune as ft
from ttfs.sw import models, training, vgg

DTYPE = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quadrant_task(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """6x6 images whose class (0..3) is the quadrant that is brighter; a fifth of the pixels silent."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.5 * torch.rand(count, 1, 6, 6, generator=generator, dtype=DTYPE)
    labels = torch.randint(0, 4, (count,), generator=generator)
    for label in range(4):
        row, column = divmod(label, 2)
        chosen = labels == label
        bright = 0.5 * torch.rand(int(chosen.sum()), 3, 3, generator=generator, dtype=DTYPE)
        images[chosen, 0, 3 * row : 3 * row + 3, 3 * column : 3 * column + 3] += bright
    return torch.where(images < 0.2, torch.zeros_like(images), images), labels


@pytest.fixture(scope="module")
def trained():
    """(trained conv TTFS network, train set, test set): about 99 % test accuracy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    images, labels = quadrant_task(600, seed=0)
    spec = vgg.VGGSpec.create("6,P", [12], (1, 6, 6), 4)
    snn = vgg.build_seeded(spec, seed=0, dtype=DTYPE, relu=False)
    optimizer, schedule = training.make_optimizer(snn.parameters(), training.resolve_config({"lr": 1e-2}))
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        training.train_epoch(snn, images[:400], labels[:400], optimizer, schedule, 32, generator)
    torch.set_num_threads(threads)
    return snn.eval(), (images[:400], labels[:400]), (images[400:], labels[400:])


def test_weight_quantisation_grid_scale_and_straight_through():
    weight = torch.tensor([[0.31, -0.52, 0.07], [0.0, 0.26, -0.13]], dtype=DTYPE, requires_grad=True)
    scale = ft.weight_scale(weight, 4)
    assert scale == 2.0 ** math.ceil(math.log2(0.52 / 7))  # 2^-3 = 0.125
    quantised = ft.quantize_weight(weight, 4)
    levels = quantised.detach() / scale
    assert torch.equal(levels, torch.floor(levels))
    assert torch.equal(levels, torch.tensor([[2.0, -4.0, 1.0], [0.0, 2.0, -1.0]], dtype=DTYPE))
    assert torch.equal(ft.quantize_weight(quantised.detach(), 4), quantised.detach())  # idempotent
    upstream = torch.randn(2, 3, dtype=DTYPE)
    (quantised * upstream).sum().backward()
    assert torch.equal(weight.grad, upstream)
    for bits in (2, 3, 8):
        levels = ft.quantize_weight(weight.detach() * 10, bits) / ft.weight_scale(weight.detach() * 10, bits)
        assert levels.abs().max() <= (1 << (bits - 1)) - 1


def test_time_quantisation_grid_and_silence():
    window = torch.tensor(2.0, dtype=DTYPE)
    activation = torch.tensor([0.0, 0.12, 0.13, 0.5, 1.3, 1.99, 2.0], dtype=DTYPE, requires_grad=True)
    quantised = ft.quantize_activation(activation, window, 8)  # step 0.25
    assert quantised.detach().tolist() == [0.0, 0.0, 0.25, 0.5, 1.25, 2.0, 2.0]
    quantised.sum().backward()
    assert torch.equal(activation.grad, torch.ones_like(activation))


def test_jitter_keeps_silent_neurons_silent_and_spikes_in_their_window():
    t_min, t_max = torch.tensor(3.0, dtype=DTYPE), torch.tensor(7.0, dtype=DTYPE)
    times = 3.0 + 4.0 * torch.rand(2000, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    times[::4] = 7.0  # silent
    generator = torch.Generator().manual_seed(2)
    jittered = ft.jitter_spike_times(times, t_min, t_max, 0.01, generator)
    assert torch.all(jittered[::4] == 7.0)
    assert torch.all((jittered >= 3.0) & (jittered <= 7.0))
    inside = (times > 3.2) & (times < 6.8)
    moved = (jittered - times)[inside]
    assert 0.035 < float(moved.std()) < 0.045  # sigma x window = 0.04
    again = ft.jitter_spike_times(times, t_min, t_max, 0.01, torch.Generator().manual_seed(2))
    assert torch.equal(again, jittered)


def test_ideal_hardware_forward_is_the_network(trained):
    snn, _, (images, _) = trained
    with torch.no_grad():
        logits, times = snn(images, return_times=True)
        hw_logits, hw_times = ft.hardware_forward(snn, images, ft.HardwareSettings(), return_times=True)
    assert torch.equal(logits, hw_logits)
    for a, b in zip(times, hw_times):
        assert torch.equal(a, b)
    dense = models.build_network([36, 10, 4], seed=3, dtype=DTYPE)
    with torch.no_grad():
        assert torch.equal(dense.eval()(images), ft.hardware_forward(dense, images, ft.HardwareSettings()))


def test_quantised_forward_puts_every_spike_on_the_grid(trained):
    snn, _, (images, _) = trained
    settings = ft.HardwareSettings(time_steps=8, weight_bits=4)
    with torch.no_grad():
        _, times = ft.hardware_forward(snn, images, settings, return_times=True)
    t_maxes = [snn.input_t_max, *(layer.t_max for layer in snn.hidden_layers)]
    windows = [snn.input_t_max - snn.input_t_min, *(layer.window for layer in snn.hidden_layers)]
    for t, t_max, window in zip(times, t_maxes, windows):
        steps = (t_max - t) / (window / 8)
        assert torch.max(torch.abs(steps - torch.round(steps))) <= 1e-9
        assert steps.min() >= 0 and steps.max() <= 8


def test_shrink_windows_to_a_quantile(trained):
    snn, (train_images, _), _ = trained
    shrunk = copy.deepcopy(snn)
    windows = ft.shrink_windows(shrunk, train_images, 0.9)
    assert shrunk.latency < snn.latency / 5
    for (_, previous_t_max), (t_min, _) in zip(windows, windows[1:]):
        assert t_min == previous_t_max
    with torch.no_grad():
        _, times = shrunk(train_images, return_times=True)
    for layer, saturated, fired in zip(shrunk.hidden_layers, shrunk.saturated(times), shrunk.fired(times)[1:]):
        fraction = float(saturated.sum()) / float(fired.sum())
        assert 0.05 < fraction < 0.15, layer  # about 1 - 0.9 of the spikes now saturate


@pytest.mark.parametrize(
    ("settings", "gain"),
    [
        (ft.HardwareSettings(latency_quantile=0.5), 0.3),
        (ft.HardwareSettings(weight_bits=3), 0.01),
        (ft.HardwareSettings(time_steps=2), 0.03),
    ],
    ids=["low-latency", "3-bit-weights", "T=2"],
)
def test_fine_tuning_recovers_accuracy(trained, settings, gain):
    snn, train, test = trained
    original = {key: value.clone() for key, value in snn.state_dict().items()}
    tuned, report = ft.finetune(snn, train, test, settings, epochs=3, lr=3e-3, seed=0)
    assert report["baseline"]["accuracy"] >= 0.95
    assert report["after"]["accuracy"] >= report["before"]["accuracy"] + gain, ft.summary_lines(report)
    for key, value in snn.state_dict().items():
        assert torch.equal(value, original[key]), key  # the given network is untouched
    if settings.window_quantile is not None:
        assert report["latency_factor"] > 5
        assert report["after"]["latency"] == tuned.latency
    if settings.weight_bits is not None:
        assert torch.equal(tuned.layers[0].weight, ft.quantize_weight(tuned.layers[0].weight, settings.weight_bits))
    assert len(ft.summary_lines(report)) == 5


def test_noise_fine_tuning_is_seeded_and_reported(trained):
    snn, train, test = trained
    settings = ft.HardwareSettings(noise=0.05)
    _, first = ft.finetune(snn, train, test, settings, epochs=1, lr=1e-3, seed=4, repeats=2)
    _, second = ft.finetune(snn, train, test, settings, epochs=1, lr=1e-3, seed=4, repeats=2)
    assert first["after"] == second["after"] and first["history"] == second["history"]
    assert first["before"]["draws"] == 2
    assert first["before"]["accuracy"] < first["baseline"]["accuracy"]  # the noise costs accuracy


def test_sweeps_and_plot(trained, tmp_path):
    snn, (train_images, _), (images, labels) = trained
    noise = ft.sweep(snn, images, labels, "noise", [0.0, 0.05, 0.2], repeats=2)
    accuracies = [row["accuracy"] for row in noise["rows"]]
    assert accuracies[0] == pytest.approx(0.99, abs=0.02) and accuracies[2] < accuracies[0]
    steps = ft.sweep(
        snn, images, labels, "time_steps", [2, 16], window_quantile=ft.DEFAULT_TIME_QUANTILE, calibration_images=train_images
    )
    assert steps["rows"][1]["accuracy"] > steps["rows"][0]["accuracy"]
    assert steps["rows"][0]["latency"] < snn.latency  # the windows of a copy were shrunk
    with pytest.raises(ft.FineTuneError, match="calibration images"):
        ft.sweep(snn, images, labels, "time_steps", [2], window_quantile=0.9)
    bits = ft.sweep(snn, images, labels, "weight_bits", [2, 8])
    assert len(ft.sweep_table(bits)) == 3
    path = tmp_path / "sweep.png"
    ft.plot_sweeps([noise, steps, bits], str(path), title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_settings_raise_clear_errors(trained):
    snn, train, test = trained
    for kwargs, message in (
        ({"noise": -0.1}, "noise"),
        ({"time_steps": 1}, "time steps"),
        ({"weight_bits": 17}, "weight bits"),
        ({"latency_quantile": 0.0}, "latency quantile"),
    ):
        with pytest.raises(ft.FineTuneError, match=message):
            ft.HardwareSettings(**kwargs)
    with pytest.raises(ft.FineTuneError, match="sweep"):
        ft.sweep(snn, *test, "colour", [1])
    with pytest.raises(ft.FineTuneError, match="epochs"):
        ft.finetune(snn, train, test, ft.HardwareSettings(noise=0.1), epochs=-1)
    assert np.isclose(ft.HardwareSettings(time_steps=16).window_quantile, ft.DEFAULT_TIME_QUANTILE)


def test_cli_trains_fine_tunes_and_sweeps_a_conv_run(tmp_path, capsys):
    from ttfs.cli import main as cli

    base = tmp_path / "vgg"
    assert cli.main(["train", "--arch", "vgg", "--layers", "4,P", "--epochs", "1", "--batch-size", "200", "--lr", "5e-3",
                     "--out", str(base), "--quiet"]) == 0  # fmt: skip
    tuned = tmp_path / "tuned"
    assert cli.main(["train", "--mode", "finetune", "--init", str(base), "--latency-quantile", "0.5", "--epochs", "1",
                     "--lr", "1e-3", "--batch-size", "200", "--out", str(tuned), "--quiet"]) == 0  # fmt: skip
    output = capsys.readouterr().out
    assert "conv layers      4,P, dense none" in output and "after tuning" in output
    report = json.loads((tuned / "report.json").read_text())
    assert report["mode"] == "finetune" and report["finetune"]["latency_factor"] > 2
    assert report["latency"] == report["finetune"]["after"]["latency"] < report["finetune"]["baseline"]["latency"]
    assert report["test_accuracy"] == report["finetune"]["after"]["accuracy"]
    plot = tmp_path / "sweep.png"
    assert cli.main(["eval", str(base), "--noise", "0", "0.05", "--time-steps", "4", "--weight-bits", "4", "--repeats", "2",
                     "--plot", str(plot), "--json", str(tmp_path / "eval.json")]) == 0  # fmt: skip
    output = capsys.readouterr().out
    assert "spike-time noise sigma" in output and "time steps T per window" in output and "weight bits B" in output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sweeps = json.loads((tmp_path / "eval.json").read_text())["sweeps"]
    assert [result["kind"] for result in sweeps] == ["noise", "time_steps", "weight_bits"]
    assert sweeps[0]["rows"][0]["accuracy"] > sweeps[0]["rows"][1]["accuracy"]  # noise costs accuracy
    assert sweeps[1]["window_quantile"] == ft.DEFAULT_TIME_QUANTILE  # the run's long windows were shrunk


def test_named_vgg16_layout_brings_its_dense_head():
    config = training.resolve_config({"arch": "vgg", "layers": "vgg16-28"})
    assert config["widths"] == [512, 512] and config["layers"].count(",") == 16  # 13 convs, 4 pools
    assert training.resolve_config({"arch": "vgg", "layers": "vgg16-32", "widths": [64]})["widths"] == [64]
    assert training.resolve_config({"arch": "vgg", "layers": "8,P"})["widths"] == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--noise", "0.1"], "hardware settings are for mode finetune"),
        (["train", "--mode", "finetune", "--init", "runs/x"], "needs at least one of noise"),
        (["train", "--arch", "vgg"], "arch vgg needs layers"),
        (["train", "--arch", "vgg", "--layers", "16,P", "--batch-norm", "after"], "batch norm exists only in the ReLU twin"),
        (["train", "--layers", "16,P"], "need arch vgg"),
        (["train", "--arch", "vgg", "--layers", "16,X"], "neither a channel count"),
        (["train", "--mode", "finetune", "--init", "runs/x", "--weight-bits", "1"], "--weight-bits: 1 is outside 2..16"),
        (["eval", "runs/x", "--noise", "0.01", "-0.5"], "noise: -0.5"),
        (["eval", "runs/x", "--weight-bits", "4", "17"], "--weight-bits: 17 is outside 2..16"),
    ],
)
def test_cli_refuses_bad_conv_and_hardware_settings(capsys, argv, message):
    from ttfs.cli import main as cli

    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
