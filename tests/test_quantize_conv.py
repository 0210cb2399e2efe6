"""Quantisation of conv networks (ttfs.sw.quantize on contract v2): the mapping onto conv2d
layers and its refusals, and the integer forward that QAT trains through, which must equal
the golden model bit for bit on the exported bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from ttfs.contract.datasets import load_dataset
from ttfs.sim import golden
from ttfs.sim.random_bundle import random_conv_bundle, random_images
from ttfs.sw import models, vgg
from ttfs.sw.conv import TTFSConv2d, TTFSFlatten, TTFSLayerNetwork, TTFSMaxPool2d
from ttfs.sw.export import build_bundle
from ttfs.sw.folding import fold_network
from ttfs.sw.quantize import (
    IntegerNetwork,
    QuantizeError,
    calibrate,
    check_expressible,
    finetune,
    quantile,
)
from ttfs.sw.ttfs import TTFSDense

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DTYPE = torch.float64


@pytest.fixture(scope="module")
def sample():
    """The first 300 training and 200 test images of the embedded MNIST sample."""
    train, test = load_dataset("mnist-sample", "train"), load_dataset("mnist-sample", "test")
    return (train.images[:300], train.labels[:300]), (test.images[:200], test.labels[:200])


def test_integer_forward_equals_golden_on_random_conv_bundles():
    """Valid and same padding, kernels 1/3/5, pools 1..4 with remainders, biases per channel and per position."""
    kinds = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        bundle = random_conv_bundle(rng)
        kinds |= {(layer.padding, layer.pool_size, layer.bias_per) for layer in bundle.layers if layer.is_conv}
        images = random_images(rng, bundle, 24)
        expected = golden.run(bundle, images)
        logits, activations = IntegerNetwork.from_bundle(bundle).predict(images, batch_size=7)
        np.testing.assert_array_equal(logits, expected.logits)
        assert len(activations) == len(expected.activations)
        for mine, theirs in zip(activations, expected.activations):
            np.testing.assert_array_equal(mine, theirs)
    assert {padding for padding, _, _ in kinds} == {"same", "valid"}
    assert {per for _, _, per in kinds} == {"channel", "position"}
    assert {pool for _, pool, _ in kinds} >= {1, 2, 3}


def test_clipped_fractions_count_conv_neurons_before_pooling():
    bundle = random_conv_bundle(3, convs=[(3, 3, "same", 2)], dense=[4], time_steps=4, bias_per="position")
    images = random_images(4, bundle, 10)
    result = golden.run(bundle, images)
    network = IntegerNetwork.from_bundle(bundle)
    conv = bundle.layers[0]
    maps = torch.from_numpy(result.activations[0].astype(np.float64))
    with torch.no_grad():
        potential = network.drive(0, maps)
    assert potential.shape == (10, *conv.conv_shape)
    unclipped = np.floor(potential.numpy() / conv.ramp)
    # The drive is the golden model's: clipping it gives the pre-pool activations.
    pre_pool = golden.run(bundle, images, pre_pool=True).pre_pool_activations[1]
    np.testing.assert_array_equal(np.clip(unclipped, 0, bundle.time_steps).reshape(10, -1), pre_pool)
    assert 0 < np.mean(unclipped > bundle.time_steps) < 1
    fractions = network.clipped_fractions(result.activations[:-1], batch_size=3)
    assert fractions == [float(np.mean(unclipped > bundle.time_steps))]


def test_quantile_is_torch_quantile_without_its_size_limit():
    generator = torch.Generator().manual_seed(1)
    for count in (1, 2, 17, 1000):
        values = torch.rand(count, generator=generator, dtype=DTYPE) * 5
        for fraction in (0.0, 0.5, 0.9999, 1.0):
            assert quantile(values, fraction) == float(torch.quantile(values, fraction))
    many = torch.arange(1 << 24 | 5, dtype=DTYPE)  # torch.quantile refuses more than 2^24 values
    assert quantile(many, 0.5) == float(((1 << 24) + 4) / 2)


def _conv_snn(layers: str, dense: list[int], *, seed: int, kernel_size: int = 3, padding: str = "same",
              batch_norm: str | None = None, images: np.ndarray | None = None) -> TTFSLayerNetwork:  # fmt: skip
    """A seeded conv TTFS network on 1x28x28 (batch norm with random statistics folded), windows calibrated."""
    spec = vgg.VGGSpec.create(layers, dense, (1, 28, 28), 10, kernel_size=kernel_size, padding=padding,
                              batch_norm=batch_norm)  # fmt: skip
    relu = vgg.build_seeded(spec, seed=seed, dtype=DTYPE, relu=True)
    generator = torch.Generator().manual_seed(seed)
    for module in relu.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                module.running_mean.copy_(0.2 * torch.rand(module.num_features, generator=generator, dtype=DTYPE))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator, dtype=DTYPE))
                module.bias.copy_(0.3 * torch.rand(module.num_features, generator=generator, dtype=DTYPE))
    snn = vgg.relu_to_snn(fold_network(relu.eval()))
    models.calibrate_windows(snn, [torch.from_numpy(images / 255.0)])
    return snn.eval()


NETWORKS = {
    "conv-pool-conv-pool": dict(layers="3,P,4,P", dense=[]),
    "valid-5x5-pool4-dense": dict(layers="3,P,P", dense=[6], kernel_size=5, padding="valid"),
    "bn-after-border-bias": dict(layers="3,4,P", dense=[5], batch_norm="after"),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_qat_integer_forward_is_what_the_golden_model_runs_on_the_exported_bundle(name, sample):
    (train_images, train_labels), (test_images, _) = sample
    snn = _conv_snn(**NETWORKS[name], seed=4, images=train_images)
    plan = calibrate(snn, train_images, 6, 8)
    assert [scales.conv is not None for scales in plan.layers[:-1]] == [
        isinstance(layer, TTFSConv2d) for layer in snn.hidden_layers
    ]
    network = IntegerNetwork.from_float(snn, plan)
    before = network.integer_arrays()
    history = finetune(network, train_images, train_labels, 1, lr=3e-3, batch_size=50, seed=1)
    assert len(history) == 1
    after = network.integer_arrays()
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(before, after))  # QAT moved integer weights
    bundle = build_bundle(plan, after, (1, 28, 28), [str(k) for k in range(10)], {})
    assert bundle.version == 2
    expected = golden.run(bundle, test_images)
    logits, activations = network.predict(test_images)
    np.testing.assert_array_equal(logits, expected.logits)
    for mine, theirs in zip(activations, expected.activations):
        np.testing.assert_array_equal(mine, theirs)
    assert np.count_nonzero(expected.activations[1]) > 0  # the conv layer is not silent
    bias_per = [layer.bias_per for layer in bundle.hidden_layers if layer.is_conv]
    # Batch norm after the ReLU, folded into the second 'same' conv, leaves a border bias there.
    assert bias_per == (["channel", "position"] if name == "bn-after-border-bias" else ["channel"] * len(bias_per))


def test_conv_networks_map_onto_contract_layers_with_merged_pools(sample):
    (train_images, _), _ = sample
    snn = _conv_snn("3,P,P,4,P", [5], seed=2, images=train_images)
    sources = check_expressible(snn)
    assert [source.name for source in sources] == ["conv1", "conv2", "fc1", "out"]
    assert [source.conv.pool_size for source in sources[:2]] == [4, 2]  # two 2x2 pools are one 4x4 pool
    assert sources[1].conv.input_shape == (3, 7, 7) and sources[1].conv.output_size == (7, 7)
    plan = calibrate(snn, train_images[:50], 5, 16)
    bundle = build_bundle(plan, IntegerNetwork.from_float(snn, plan).integer_arrays(), (1, 28, 28), None, {})
    assert [layer.output_shape for layer in bundle.hidden_layers] == [(3, 7, 7), (4, 3, 3), (5,)]


def _network(*layers) -> TTFSLayerNetwork:
    return TTFSLayerNetwork(list(layers), (1, 8, 8))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: _network(TTFSConv2d(1, 2, 3, (8, 8)), TTFSMaxPool2d(2, (8, 8), 2), TTFSMaxPool2d(2, (4, 4), 4),
                          TTFSFlatten(), TTFSDense(2, 3, readout=True)),
         r"layers\[2\] \(TTFSMaxPool2d\): the pools after conv1 amount to a 8x8 pool"),
        (lambda: _network(TTFSMaxPool2d(1, (8, 8), 2), TTFSConv2d(1, 2, 3, (4, 4)), TTFSFlatten(),
                          TTFSDense(32, 3, readout=True)),
         r"layers\[0\] \(TTFSMaxPool2d\): the contract pools only right after a convolution"),
        (lambda: _network(TTFSConv2d(1, 2, 2, (8, 8), padding="valid"), TTFSFlatten(), TTFSDense(98, 3, readout=True)),
         r"layers\[0\] \(TTFSConv2d\): kernel size 2 is not one of the contract's 1, 3, 5, 7"),
        (lambda: _network(TTFSConv2d(1, 2, 3, (8, 8)), TTFSFlatten(), TTFSDense(128, 4), TTFSFlatten(),
                          TTFSDense(4, 3, readout=True)),
         r"layers\[3\] \(TTFSFlatten\): the contract expresses"),
    ],
    ids=["pool-8", "pool-of-the-image", "even-kernel", "second-flatten"],
)  # fmt: skip
def test_what_contract_v2_cannot_express_is_refused_in_one_line(build, message):
    with pytest.raises(QuantizeError, match=message) as caught:
        check_expressible(build())
    assert "\n" not in str(caught.value)


def test_a_min_pool_is_refused_naming_the_conv_layer():
    network = _network(TTFSConv2d(1, 2, 3, (8, 8)), TTFSMaxPool2d(2, (8, 8), 2), TTFSConv2d(2, 3, 3, (4, 4)),
                       TTFSMaxPool2d(3, (4, 4), 2), TTFSFlatten(), TTFSDense(12, 3, readout=True))  # fmt: skip
    assert [source.name for source in check_expressible(network)] == ["conv1", "conv2", "out"]
    network.layers[3].min_channels[1] = True
    with pytest.raises(QuantizeError, match=r"^conv2: its pool \(layers\[3\] \(TTFSMaxPool2d\)\) takes the minimum "
                                            r"on channel\(s\) \[1\].*no min-pool") as caught:  # fmt: skip
        check_expressible(network)
    assert "\n" not in str(caught.value)
