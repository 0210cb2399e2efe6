"""Batch norm (before and after the ReLU) and input normalisation fold away exactly.

Unfolded ReLU == folded ReLU == TTFS network in float64 (<= 1e-9) on random
small VGG-style nets with 'same' padding, including the border-dependent
bias and the negative-scale max-pool (min-pool) case; gradients of the
folded twin and the TTFS network agree.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from ttfs.sw import vgg
from ttfs.sw.conv import TTFSConv2d, TTFSMaxPool2d
from ttfs.sw.folding import FoldingError, batch_norm_affine, fold_network

DTYPE = torch.float64
INPUT_NORM = ((0.3, 0.5), (0.2, 0.4))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randomize_batch_norms(network: nn.Module, seed: int, negative: bool) -> None:
    """Non-trivial statistics and affine parameters; with ``negative`` a third of the scales below 0."""
    generator = torch.Generator().manual_seed(seed)
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            count = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(0.3 * torch.randn(count, generator=generator, dtype=DTYPE))
                module.running_var.copy_(0.5 + torch.rand(count, generator=generator, dtype=DTYPE))
                gamma = 0.5 + torch.rand(count, generator=generator, dtype=DTYPE)
                if negative:
                    gamma[::3] *= -1
                module.weight.copy_(gamma)
                module.bias.copy_(0.3 * torch.randn(count, generator=generator, dtype=DTYPE))


def random_images(count: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    pixels = torch.rand(count, *shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    return torch.where(pixels < 1 / 3, torch.zeros_like(pixels), pixels)


def normalised_network(batch_norm: str, negative: bool, seed: int, padding: str = "same", layers: str = "4,P,6,5"):
    """(unfolded ReLU net in eval mode, images) for a small VGG with input normalisation."""
    spec = vgg.VGGSpec.create(layers, [7], (2, 8, 8), 3, batch_norm=batch_norm, padding=padding, input_norm=INPUT_NORM)
    relu = vgg.build_seeded(spec, seed=seed, dtype=DTYPE, relu=True)
    randomize_batch_norms(relu, seed, negative)
    return relu.eval(), random_images(40, spec.input_shape, seed)


def snn_of(folded: vgg.ReLUConvNetwork, images: torch.Tensor):
    snn = vgg.relu_to_snn(folded)
    snn.train()
    with torch.no_grad():
        snn(images)  # window rule: no spike saturates on these images
    return snn.eval()


@pytest.mark.parametrize("negative", [False, True], ids=["positive-scales", "negative-scales"])
@pytest.mark.parametrize("batch_norm", ["before", "after"])
def test_unfolded_equals_folded_equals_snn(batch_norm, negative):
    relu, images = normalised_network(batch_norm, negative, seed=5)
    folded = fold_network(relu)
    assert relu.has_normalization and not folded.has_normalization
    snn = snn_of(folded, images)
    with torch.no_grad():
        relu_logits, relu_activations = relu(images, return_activations=True)
        folded_logits, folded_activations = folded(images, return_activations=True)
        snn_logits, times = snn(images, return_times=True)
    snn_activations = snn.activations(times)
    # The ReLU outputs (before an after-ReLU BN) are the spike-coded activations in all three.
    for unfolded_layer, folded_layer, snn_layer in zip(relu_activations, folded_activations, snn_activations):
        assert torch.max(torch.abs(unfolded_layer - folded_layer)) <= 1e-9
        assert torch.max(torch.abs(folded_layer - snn_layer)) <= 1e-9
    assert torch.max(torch.abs(relu_logits - folded_logits)) <= 1e-9
    assert torch.max(torch.abs(folded_logits - snn_logits)) <= 1e-9
    for fired in snn.fired(times)[1:]:
        assert 0 < fired.double().mean() < 1
    # The input normalisation's shift, folded across 'same' padding, needs a border bias.
    assert snn.layers[0].border_bias.abs().max() > 0.01
    pool = next(layer for layer in snn.layers if isinstance(layer, TTFSMaxPool2d))
    assert bool(pool.min_channels.any()) == (batch_norm == "after" and negative)


def test_border_bias_is_what_makes_same_padding_exact():
    relu, images = normalised_network("after", False, seed=7)
    folded = fold_network(relu)
    convs = [module for module in folded.layers if isinstance(module, vgg.BorderBiasConv2d)]
    for conv in convs:
        border = conv.border_bias
        # Zero wherever the 3x3 kernel lies inside; non-zero on the one-pixel frame.
        assert torch.all(border[:, 1:-1, 1:-1] == 0)
        assert border[:, 0, :].abs().max() > 0 and border[:, :, -1].abs().max() > 0
    with torch.no_grad():
        expected = relu(images)
        convs[1].border_bias.zero_()  # a per-channel bias alone is wrong at the border
        assert torch.max(torch.abs(folded(images) - expected)) > 1e-3


def test_valid_padding_needs_no_border_bias():
    relu, images = normalised_network("after", False, seed=9, padding="valid", layers="4,3,P")
    folded = fold_network(relu)
    for module in folded.layers:
        if isinstance(module, vgg.BorderBiasConv2d):
            assert torch.all(module.border_bias == 0)
    with torch.no_grad():
        assert torch.max(torch.abs(folded(images) - relu(images))) <= 1e-9


def test_negative_scale_across_a_pool_is_refused_when_asked():
    relu, _ = normalised_network("after", True, seed=11)
    with pytest.raises(FoldingError, match=r"layers\[\d+\] \(SignedMaxPool2d\).*negative on channel\(s\) \[0, 3\]"):
        fold_network(relu, negative_scale="refuse")
    positive, images = normalised_network("after", False, seed=11)
    folded = fold_network(positive, negative_scale="refuse")  # nothing negative: folds
    with torch.no_grad():
        assert torch.max(torch.abs(folded(images) - positive(images))) <= 1e-9


def test_negative_scale_without_min_pool_would_be_wrong():
    relu, images = normalised_network("after", True, seed=13)
    folded = fold_network(relu)
    pool = next(module for module in folded.layers if isinstance(module, vgg.SignedMaxPool2d))
    assert pool.min_channels.tolist() == [True, False, False, True]
    with torch.no_grad():
        expected = relu(images)
        pool.min_channels.zero_()
        assert torch.max(torch.abs(folded(images) - expected)) > 1e-3


@pytest.mark.parametrize("batch_norm", ["before", "after"])
def test_gradients_of_folded_twin_and_snn_are_equal(batch_norm):
    relu, images = normalised_network(batch_norm, True, seed=17)
    folded = fold_network(relu)
    snn = snn_of(folded, images)
    labels = torch.arange(len(images)) % 3
    grads = {}
    for name, model in (("relu", folded), ("snn", snn)):
        model.train()
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images), labels).backward()
        grads[name] = [parameter.grad for parameter in model.parameters()]
    assert len(grads["relu"]) == len(grads["snn"]) == 10  # 3 convs, a dense layer, the readout
    for relu_grad, snn_grad in zip(grads["relu"], grads["snn"]):
        assert torch.any(relu_grad != 0)
        assert torch.max(torch.abs(snn_grad - relu_grad)) / torch.max(torch.abs(relu_grad)) <= 1e-9


def test_batch_norm_affine_matches_eval_mode():
    norm = nn.BatchNorm1d(5, dtype=DTYPE)
    randomize_batch_norms(norm, 3, negative=True)
    norm.eval()
    x = torch.randn(7, 5, dtype=DTYPE)
    scale, shift = batch_norm_affine(norm)
    with torch.no_grad():
        assert torch.max(torch.abs(norm(x) - (x * scale + shift))) <= 1e-12


def test_folding_leaves_the_input_network_unchanged():
    relu, _ = normalised_network("before", False, seed=19)
    before = {key: value.clone() for key, value in relu.state_dict().items()}
    fold_network(relu)
    for key, value in relu.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_unfoldable_networks_raise_clear_errors():
    no_stats = vgg.ReLUConvNetwork(
        [nn.Flatten(), nn.Linear(4, 3, dtype=DTYPE), nn.BatchNorm1d(3, track_running_stats=False, dtype=DTYPE),
         nn.ReLU(), nn.Linear(3, 2, dtype=DTYPE)],
        (1, 2, 2),
    )  # fmt: skip
    with pytest.raises(FoldingError, match="without running statistics"):
        fold_network(no_stats)
    across_relu = vgg.ReLUConvNetwork(
        [nn.Flatten(), nn.Linear(4, 3, dtype=DTYPE), nn.ReLU(), nn.BatchNorm1d(3, dtype=DTYPE), nn.ReLU(),
         nn.Linear(3, 2, dtype=DTYPE)],
        (1, 2, 2),
    )  # fmt: skip
    with pytest.raises(FoldingError, match=r"layers\[4\] \(ReLU\).*across a ReLU"):
        fold_network(across_relu)
    relu, _ = normalised_network("after", False, seed=23)
    with pytest.raises(FoldingError, match="negative_scale"):
        fold_network(relu, negative_scale="ignore")


def test_folded_dense_head_and_flatten():
    """An after-ReLU BN on the last conv crosses a pool and a flatten into the dense layer (per channel, H*W each)."""
    relu, images = normalised_network("after", False, seed=29, layers="3,P,4,P")
    folded = fold_network(relu)
    snn = snn_of(folded, images)
    assert isinstance(snn.layers[0], TTFSConv2d)
    with torch.no_grad():
        assert torch.max(torch.abs(snn(images) - relu(images))) <= 1e-9


def test_batch_norm_run_is_folded_saved_and_loaded(tmp_path):
    """`ttfs train --arch vgg --mode relu --batch-norm after`: the run stores the folded TTFS network."""
    from ttfs.sw import models, training
    from ttfs.sw.conv import TTFSLayerNetwork

    config = {
        "arch": "vgg", "layers": "4,P", "mode": "relu", "batch_norm": "after", "epochs": 1, "batch_size": 200,
        "lr": 5e-3, "dtype": "float64", "out": str(tmp_path / "run"),
    }  # fmt: skip
    snn, config, report = training.train_run(config, progress=False)
    assert config["widths"] == [] and config["layers"] == "4,P"
    assert report["unfolded_relu_test_accuracy"] == report["snn_test_accuracy"] == report["relu_test_accuracy"] > 0.5
    assert report["saturated_spikes"] == 0 and len(report["spikes_per_neuron"]) == 1
    loaded, loaded_config = models.load_run(tmp_path / "run")
    assert isinstance(loaded, TTFSLayerNetwork) and loaded_config == config
    for key, value in snn.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.layers[0].border_bias.abs().max() == 0  # no normalisation before the first conv
    assert loaded.layers[3].weight.shape == (10, 4 * 14 * 14)  # layers: conv, pool, flatten, readout
