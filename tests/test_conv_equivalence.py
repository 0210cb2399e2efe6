"""Convolutional B1 TTFS networks compute, and train, exactly like their ReLU twins (float64).

Also: the conv layer's spike-time closed form (padding = "no spike") equals
the same layer unrolled into a dense TTFS layer, pooling takes the earliest
spike, the VGG spec parser and layouts, synaptic-event counts, and the
conversions both ways.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from ttfs.sw import vgg
from ttfs.sw.conv import ConvError, TTFSConv2d, TTFSLayerNetwork, TTFSMaxPool2d
from ttfs.sw.ttfs import TTFSDense

DTYPE = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_images(count: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Images in [0, 1] with a third of the pixels silent, as in MNIST."""
    pixels = torch.rand(count, *shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    return torch.where(pixels < 1 / 3, torch.zeros_like(pixels), pixels)


def calibrated(snn: TTFSLayerNetwork, images: torch.Tensor) -> TTFSLayerNetwork:
    """Apply the window rule on ``images`` (so nothing saturates on them), then evaluation mode."""
    snn.train()
    with torch.no_grad():
        snn(images)
    return snn.eval()


SPECS = {
    "same": dict(layers="4,P,6,5", dense=[7], input_shape=(2, 8, 8), classes=3),
    "valid": dict(layers="3,4,P", dense=[], input_shape=(1, 9, 9), classes=4, padding="valid"),
    "deep": dict(layers="3,3,P,5,5,P,6", dense=[8, 6], input_shape=(1, 12, 12), classes=5),
}


def make_network(name: str, seed: int) -> tuple[TTFSLayerNetwork, vgg.ReLUConvNetwork, torch.Tensor]:
    options = dict(SPECS[name])
    spec = vgg.VGGSpec.create(options.pop("layers"), options.pop("dense"), options.pop("input_shape"), options.pop("classes"), **options)
    snn = vgg.build_seeded(spec, seed=seed, dtype=DTYPE, relu=False)
    images = random_images(48, spec.input_shape, seed)
    return calibrated(snn, images), vgg.snn_to_relu(snn), images


def unrolled_dense(conv: TTFSConv2d) -> TTFSDense:
    """The conv layer as a dense layer on flattened maps: column j of W is the conv of a unit input j."""
    inputs = conv.in_channels * conv.input_size[0] * conv.input_size[1]
    units = torch.eye(inputs, dtype=DTYPE).reshape(inputs, conv.in_channels, *conv.input_size)
    with torch.no_grad():
        padding = conv.padding
        columns = nn.functional.conv2d(units, conv.weight, padding=padding).flatten(1)
        dense = TTFSDense(inputs, conv.outputs, t_min=float(conv.t_min), t_max=float(conv.t_max), dtype=DTYPE)
        dense.weight.copy_(columns.T)
        dense.bias.copy_((conv.bias[:, None, None] + conv.border_bias).flatten())
    return dense


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv_layer_equals_its_unrolled_dense_layer(padding):
    generator = torch.Generator().manual_seed(3)
    conv = TTFSConv2d(2, 3, 3, (5, 6), padding=padding, t_min=2.0, t_max=6.0, dtype=DTYPE)
    with torch.no_grad():
        conv.border_bias.copy_(0.3 * torch.randn(conv.border_bias.shape, generator=generator, dtype=DTYPE))
    t_in = 1.0 + torch.rand(4, 2, 5, 6, generator=generator, dtype=DTYPE)  # previous window [1, 2]
    t_in[:, :, ::2, 1::3] = 2.0  # silent inputs spike at t_max(n-1) = t_min(n)
    with torch.no_grad():
        conv_times = conv(t_in)
        dense_times = unrolled_dense(conv)(t_in.flatten(1))
    assert conv_times.shape == (4, 3, *conv.output_size)
    assert torch.max(torch.abs(conv_times.flatten(1) - dense_times)) <= 1e-12
    assert 0 < (conv_times < conv.t_max).double().mean() < 1  # firing and silent neurons both occur


def event_driven_spike_times(weight: np.ndarray, bias: np.ndarray, t_in: np.ndarray, t_min: float, t_max: float) -> np.ndarray:
    """One neuron per row of ``weight``, simulated event by event (numpy, independent of ttfs.sw.conv).

    Before t_min each input spike adds its weight to the slope and the
    potential grows piecewise linearly; from t_min the slope is 1 (B1) and
    the neuron fires where it reaches (t_max - t_min) - bias, held in the window.
    """
    order = np.argsort(t_in, kind="stable")
    spikes = np.empty(len(weight))
    for neuron, (row, b) in enumerate(zip(weight, bias)):
        potential, slope, now = 0.0, 0.0, t_in.min()
        for j in order:
            potential += slope * (t_in[j] - now)
            now = t_in[j]
            slope += row[j]
        potential += slope * (t_min - now)
        crossing = t_min + ((t_max - t_min) - b) - potential
        spikes[neuron] = min(max(crossing, t_min), t_max)
    return spikes


def test_conv_closed_form_equals_event_driven_membrane():
    """Padding included: a padded position is an input that never spikes before t_min(n), so it adds nothing."""
    generator = torch.Generator().manual_seed(13)
    conv = TTFSConv2d(2, 3, 3, (4, 5), padding="same", t_min=2.0, t_max=7.0, dtype=DTYPE)
    t_in = 1.0 + torch.rand(2, 2, 4, 5, generator=generator, dtype=DTYPE)  # previous window [1, 2]
    t_in[:, 1, 1:3, :2] = 2.0  # silent inputs
    with torch.no_grad():
        closed_form = conv(t_in).flatten(1).numpy()
        dense = unrolled_dense(conv)
    for image in range(2):
        simulated = event_driven_spike_times(
            dense.weight.detach().numpy(), dense.bias.detach().numpy(), t_in[image].flatten().numpy(), 2.0, 7.0
        )
        assert np.max(np.abs(closed_form[image] - simulated)) <= 1e-12
    assert 0 < np.mean(closed_form < 7.0) < 1


def test_padding_is_no_spike_and_equals_zero_padded_relu():
    conv = TTFSConv2d(1, 2, 3, (4, 4), t_min=1.0, t_max=5.0, dtype=DTYPE)
    t_in = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=DTYPE)  # window [0, 1]
    padded = conv.pad_spike_times(t_in)
    assert padded.shape == (3, 1, 6, 6)
    assert torch.all(padded[:, :, 0, :] == conv.t_min) and torch.all(padded[:, :, :, -1] == conv.t_min)
    with torch.no_grad():
        relu = torch.relu(nn.functional.conv2d(1.0 - t_in, conv.weight, conv.bias, padding="same"))
        assert torch.max(torch.abs((conv.t_max - conv(t_in)) - relu)) <= 1e-12


def test_pool_takes_the_earliest_spike_or_on_flagged_channels_the_latest():
    pool = TTFSMaxPool2d(2, (4, 4), 2)
    t_in = torch.rand(2, 2, 4, 4, generator=torch.Generator().manual_seed(9), dtype=DTYPE)
    t_in[0, 1, :2, :2] = 1.0  # one silent input (t_max = 1) in a block of channel 1
    earliest = pool(t_in)
    blocks = t_in.unfold(2, 2, 2).unfold(3, 2, 2).reshape(2, 2, 2, 2, 4)
    assert torch.equal(earliest, blocks.min(dim=-1).values)
    pool.min_channels[1] = True
    mixed = pool(t_in)
    assert torch.equal(mixed[:, 0], blocks.min(dim=-1).values[:, 0])
    assert torch.equal(mixed[:, 1], blocks.max(dim=-1).values[:, 1])
    assert mixed[0, 1, 0, 0] == 1.0  # the latest spike of a block with a silent neuron is silence


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spike_times_map_back_to_relu_activations(name):
    snn, relu, images = make_network(name, seed=11)
    with torch.no_grad():
        logits, times = snn(images, return_times=True)
        relu_logits, relu_activations = relu(images, return_activations=True)
    snn_activations = snn.activations(times)
    assert len(snn_activations) == len(relu_activations) == len(snn.hidden_layers) + 1
    for snn_layer, relu_layer in zip(snn_activations, relu_activations):
        assert snn_layer.shape == relu_layer.shape
        assert torch.max(torch.abs(snn_layer - relu_layer)) <= 1e-9
    assert torch.max(torch.abs(logits - relu_logits)) <= 1e-9
    for fired, relu_layer in zip(snn.fired(times)[1:], relu_activations[1:]):
        assert 0 < fired.double().mean() < 1
        assert torch.equal(fired, relu_layer > 0)
    assert not any(mask.any() for mask in snn.saturated(times))
    for layer, t in zip(snn.hidden_layers, times[1:]):
        assert torch.all((t >= layer.t_min) & (t <= layer.t_max))


def loss_and_grads(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    return float(loss.detach()), [parameter.grad.clone() for parameter in model.parameters()]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_gradients_equal_relu_twin(name):
    snn, relu, images = make_network(name, seed=21)
    labels = torch.arange(len(images)) % snn.layers[-1].outputs
    snn.train()  # the window rule runs, as in training
    snn_loss, snn_grads = loss_and_grads(snn, images, labels)
    relu_loss, relu_grads = loss_and_grads(relu, images, labels)
    assert abs(snn_loss - relu_loss) <= 1e-12
    assert len(snn_grads) == len(relu_grads) == 2 * len(snn.windowed_layers)
    for index, (snn_grad, relu_grad) in enumerate(zip(snn_grads, relu_grads)):
        assert torch.any(relu_grad != 0), index
        relative = torch.max(torch.abs(snn_grad - relu_grad)) / torch.max(torch.abs(relu_grad))
        assert relative <= 1e-9, index


def test_training_steps_stay_identical():
    snn, relu, images = make_network("same", seed=31)
    labels = (images.flatten(1)[:, :3] * torch.tensor([1.0, 2.0, 3.0], dtype=DTYPE)).argmax(dim=1)
    curves = {}
    for name, model in (("snn", snn), ("relu", relu)):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        curves[name] = []
        for step in range(20):
            batch = slice((step * 16) % 48, (step * 16) % 48 + 16)
            loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            curves[name].append(float(loss.detach()))
    assert max(abs(a - b) for a, b in zip(curves["snn"], curves["relu"])) <= 1e-9
    assert curves["snn"][-1] < curves["snn"][0]
    for snn_parameter, relu_parameter in zip(snn.parameters(), relu.parameters()):
        assert torch.max(torch.abs(snn_parameter - relu_parameter)) <= 1e-8


def test_window_rule_chains_and_grows_only():
    snn, relu, images = make_network("deep", seed=41)
    windows = snn.windows()
    assert windows[0][0] == 1.0
    for (_, previous_t_max), (t_min, _) in zip(windows, windows[1:]):
        assert t_min == previous_t_max
    assert windows[-1][0] == windows[-1][1] == snn.latency
    with torch.no_grad():
        _, activations = relu(images, return_activations=True)
    for layer, activation in zip(snn.hidden_layers, activations[1:]):
        assert float(layer.window) >= 10 * float(activation.max()) - 1e-12
    snn.train()
    with torch.no_grad():
        snn(images[:16])  # a batch whose activations the windows already cover: nothing grows
    assert snn.windows() == windows
    with torch.no_grad():
        snn(images * 3)  # larger activations: windows grow, and stay chained
    grown = snn.windows()
    assert all(new[1] - new[0] >= old[1] - old[0] for new, old in zip(grown[:-1], windows[:-1]))
    assert grown[-1][0] > windows[-1][0]


def test_conversions_are_exact_both_ways():
    snn, relu, _ = make_network("deep", seed=51)
    with torch.no_grad():
        snn.layers[0].border_bias.normal_()
        snn.layers[2].min_channels[1] = True
    back = vgg.relu_to_snn(vgg.snn_to_relu(snn))
    back.set_windows(snn.windows())
    for key, value in snn.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_synaptic_events_count_every_connection():
    snn, _, images = make_network("same", seed=61)
    with torch.no_grad():
        _, times = snn(images[:2], return_times=True)
    expected = 0
    t = times[0]
    for image in range(2):
        # Brute force: every (spiking input, weight) pair of every weighted layer.
        t = times[0][image : image + 1]
        fired_index = 1
        previous_t_max = snn.input_t_max
        for layer in snn.layers:
            if isinstance(layer, TTFSConv2d):
                probe = torch.zeros_like(t, requires_grad=True)
                spikes = (t < previous_t_max).to(DTYPE)
                # d(sum of every output's count of spiking inputs)/d(input) = fan-out per input position
                fan_out = torch.autograd.grad(
                    nn.functional.conv2d(probe + 1, torch.ones_like(layer.weight), padding=layer.padding).sum(), probe
                )[0]
                expected += float((spikes * fan_out).sum())
                t = times[fired_index][image : image + 1]
                previous_t_max = layer.t_max
                fired_index += 1
            elif isinstance(layer, TTFSDense):
                expected += float((t < previous_t_max).sum()) * layer.outputs
                if not layer.readout:
                    t = times[fired_index][image : image + 1]
                    previous_t_max = layer.t_max
                    fired_index += 1
            else:
                t = layer(t)
    assert float(snn.synaptic_events(times)) == expected
    assert expected > 0


def test_spec_parsing_and_vgg16_layouts():
    assert vgg.parse_layers("16, P,32,p") == [vgg.Conv(16), vgg.Pool(), vgg.Conv(32), vgg.Pool()]
    # Any kernel size and padding per conv, any pool size: a converted network's layers.
    items = vgg.parse_layers("8:5:valid,P3,16:1,4:3:same")
    assert items == [vgg.Conv(8, 5, "valid"), vgg.Pool(3), vgg.Conv(16, 1, "same"), vgg.Conv(4)]
    assert vgg.layers_text(items) == "8:5:valid,P3,16:1,4"
    assert vgg.parse_layers("4,P", kernel_size=5, padding="valid") == [vgg.Conv(4, 5, "valid"), vgg.Pool()]
    for bad, message in (("16,Q", "neither"), ("0,P", "outside"), ("P,P", "no convolution"), ("8:3:full", "padding 'full'"),
                         ("8:x", "kernel size 'x'"), ("P0", "pool size 0"), ("8:3:same:1", "C:K:valid")):
        with pytest.raises(ConvError, match=message):
            vgg.parse_layers(bad)
    spec = vgg.VGGSpec.create("8:5:valid,P3", [], (1, 14, 14), 2)
    assert spec.shapes() == [(1, 14, 14), (8, 10, 10), (8, 3, 3)] and spec.flat_features == 72
    with pytest.raises(ConvError, match="'valid' convolution does not fit a 4x4 input"):
        vgg.VGGSpec.create("4:5:valid", [], (1, 4, 4), 2)
    with pytest.raises(ConvError, match="pool does not fit"):
        vgg.VGGSpec.create("4,P,4,P,4,P", [], (1, 4, 4), 2)
    with pytest.raises(ConvError, match="batch_norm"):
        vgg.VGGSpec.create("4", [], (1, 4, 4), 2, batch_norm="middle")
    for name, (layers, dense, (height, width)) in vgg.VGG_LAYOUTS.items():
        spec = vgg.VGGSpec.create(name, dense, (3, height, width), 10)
        assert sum(isinstance(item, vgg.Conv) for item in spec.layers) == 13, name
        assert spec.flat_features == 512, name  # the last block's maps are 1x1
    with pytest.raises(ConvError, match="pool does not fit"):
        vgg.VGGSpec.create("vgg16-32", [512], (1, 28, 28), 10)
    with pytest.raises(ConvError, match="fold it first"):
        vgg.relu_to_snn(vgg.build_relu(vgg.VGGSpec.create("4,P", [], (1, 4, 4), 2, batch_norm="after")))


def test_vgg16_28_builds_and_runs_as_snn_and_relu_twin():
    spec = vgg.VGGSpec.create("vgg16-28", vgg.VGG_LAYOUTS["vgg16-28"][1], (1, 28, 28), 10)
    snn = vgg.build_seeded(spec, seed=0, dtype=torch.float32, relu=False)
    images = random_images(2, (1, 28, 28), seed=71).float()
    calibrated(snn, images)
    with torch.no_grad():
        logits, times = snn(images, return_times=True)
        relu_logits = vgg.snn_to_relu(snn)(images)
    assert len(snn.hidden_layers) == 15 and times[13].shape == (2, 512, 1, 1)  # 13 convs, 2 dense
    assert logits.shape == (2, 10)
    assert torch.allclose(logits, relu_logits, atol=1e-4 * float(relu_logits.abs().max()))


def test_bad_layers_and_networks_raise_clear_errors():
    with pytest.raises(ConvError, match="padding: 'full'"):
        TTFSConv2d(1, 2, 3, (4, 4), padding="full")
    with pytest.raises(ConvError, match="'valid' convolution does not fit a 2x2 input"):
        TTFSConv2d(1, 2, 3, (2, 2), padding="valid")
    with pytest.raises(ConvError, match="out_channels: 0"):
        TTFSConv2d(1, 0, 3, (4, 4))
    with pytest.raises(ConvError, match="2x2 pool does not fit a 1x4 input"):
        TTFSMaxPool2d(1, (1, 4), 2)
    with pytest.raises(ConvError, match="must be a dense readout"):
        TTFSLayerNetwork([TTFSConv2d(1, 2, 3, (4, 4))], (1, 4, 4))
    readout = TTFSDense(32, 2, readout=True)
    with pytest.raises(ConvError, match="exactly one readout"):
        TTFSLayerNetwork([TTFSDense(32, 32, readout=True), readout], (2, 4, 4))
    with pytest.raises(ConvError, match="window_factor"):
        TTFSLayerNetwork([readout], (2, 4, 4), window_factor=1.0)
