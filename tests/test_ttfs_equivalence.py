"""The B1 TTFS network computes, and trains, exactly like its ReLU twin (float64).

Also: the spike-time closed form agrees with the neuron's event dynamics, the
window rule, the exact conversions, and the alpha-1 parametrisation's
gradient scaling by 1 / slope.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ttfs.sw import models, training
from ttfs.sw.ttfs import Alpha1Dense, TTFSDense

DTYPE = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")
DEPTH_SIZES = {
    1: [30, 24, 6],
    2: [30, 24, 16, 6],
    4: [30, 24, 20, 16, 12, 6],
}


def random_images(count: int, inputs: int, seed: int) -> torch.Tensor:
    """Images in [0, 1] with a third of the pixels silent (exactly 0), as in MNIST."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(count, inputs, generator=generator, dtype=DTYPE)
    return torch.where(pixels < 1 / 3, torch.zeros_like(pixels), pixels)


def trained_windows_network(sizes: list[int], seed: int) -> tuple[models.TTFSNetwork, torch.Tensor]:
    """A random network whose windows the rule has set on the returned images."""
    snn = models.build_network(sizes, seed=seed, dtype=DTYPE)
    images = random_images(64, sizes[0], seed)
    snn.train()
    with torch.no_grad():
        snn(images)
    snn.eval()
    return snn, images


@pytest.mark.parametrize("depth", sorted(DEPTH_SIZES))
def test_spike_times_map_back_to_relu_activations(depth):
    snn, images = trained_windows_network(DEPTH_SIZES[depth], seed=depth)
    relu = models.snn_to_relu(snn)
    with torch.no_grad():
        logits, times = snn(images, return_times=True)
        relu_logits, relu_activations = relu(images, return_activations=True)
    snn_activations = snn.activations(times)
    assert len(snn_activations) == depth + 1
    for snn_layer, relu_layer in zip(snn_activations, relu_activations):
        assert torch.max(torch.abs(snn_layer - relu_layer)) <= 1e-9
    assert torch.max(torch.abs(logits - relu_logits)) <= 1e-9
    for fired, relu_layer in zip(snn.fired(times)[1:], relu_activations[1:]):
        # Non-trivial: some neurons fire and some stay silent, exactly where ReLU is 0.
        assert 0 < fired.float().mean() < 1
        assert torch.equal(fired, relu_layer > 0)
    for layer, t in zip(snn.hidden_layers, times[1:]):
        assert torch.all((t >= layer.t_min) & (t <= layer.t_max))


def event_driven_spike_times(weight, bias, t_in, t_min, t_max) -> np.ndarray:
    """The neuron's dynamics simulated event by event (numpy, independent of ttfs.sw.ttfs).

    Before t_min: each input spike adds its weight to the slope; the potential
    is integrated piecewise between events.  From t_min on the slope is 1 (B1);
    the spike is where V crosses the threshold (t_max - t_min) - b, or none.
    """
    outputs, inputs = weight.shape
    spikes = np.empty((t_in.shape[0], outputs))
    for image in range(t_in.shape[0]):
        order = np.argsort(t_in[image], kind="stable")
        for i in range(outputs):
            v, slope, now = 0.0, 0.0, min(t_in[image].min(), t_min)
            for j in order:
                v += slope * (t_in[image, j] - now)
                now = t_in[image, j]
                slope += weight[i, j]
            v += slope * (t_min - now)
            threshold = (t_max - t_min) - bias[i]
            crossing = t_min + (threshold - v) / 1.0
            spikes[image, i] = min(max(crossing, t_min), t_max)
    return spikes


def test_closed_form_equals_event_driven_membrane():
    generator = torch.Generator().manual_seed(7)
    layer = TTFSDense(12, 9, t_min=3.0, t_max=9.0, dtype=DTYPE)
    t_in = 2.0 + torch.rand(5, 12, generator=generator, dtype=DTYPE)  # previous window [2, 3]
    t_in[:, ::4] = 3.0  # silent inputs spike at t_max(n-1) = t_min(n)
    with torch.no_grad():
        closed_form = layer(t_in).numpy()
    simulated = event_driven_spike_times(layer.weight.detach().numpy(), layer.bias.detach().numpy(), t_in.numpy(), 3.0, 9.0)
    assert np.max(np.abs(closed_form - simulated)) <= 1e-12
    assert 0 < np.mean(closed_form < 9.0) < 1  # both firing and silent neurons are covered


def loss_and_grads(model, images, labels) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    return float(loss.detach()), [parameter.grad.clone() for parameter in model.parameters()]


@pytest.mark.parametrize("depth", sorted(DEPTH_SIZES))
def test_gradients_equal_relu_twin(depth):
    snn, images = trained_windows_network(DEPTH_SIZES[depth], seed=10 + depth)
    relu = models.snn_to_relu(snn)
    labels = torch.arange(len(images)) % DEPTH_SIZES[depth][-1]
    snn.train()  # training mode: the window rule runs, as during training
    snn_loss, snn_grads = loss_and_grads(snn, images, labels)
    relu_loss, relu_grads = loss_and_grads(relu, images, labels)
    assert abs(snn_loss - relu_loss) <= 1e-12
    names = [name for name, _ in snn.named_parameters()]
    assert names == [name for name, _ in relu.named_parameters()]
    for name, snn_grad, relu_grad in zip(names, snn_grads, relu_grads):
        assert torch.any(relu_grad != 0), name
        relative = torch.max(torch.abs(snn_grad - relu_grad)) / torch.max(torch.abs(relu_grad))
        assert relative <= 1e-9, name


def test_200_adam_steps_identical_to_relu_twin():
    sizes = [20, 16, 12, 4]
    snn = models.build_network(sizes, seed=3, dtype=DTYPE)
    relu = models.snn_to_relu(snn)
    images = random_images(96, sizes[0], seed=4)
    teacher = torch.randn(sizes[0], sizes[-1], generator=torch.Generator().manual_seed(6), dtype=DTYPE)
    labels = (images @ teacher).argmax(dim=1)
    config = training.resolve_config({"lr": 1e-2, "lr_decay_steps": 50})
    curves = {}
    for name, model in (("snn", snn), ("relu", relu)):
        optimizer, schedule = training.make_optimizer(model.parameters(), config)
        generator = torch.Generator().manual_seed(5)
        curves[name] = []
        for _ in range(25):  # 25 epochs x 8 batches = 200 steps
            training.train_epoch(model, images, labels, optimizer, schedule, 12, generator, on_step=curves[name].append)
    assert len(curves["snn"]) == 200
    assert max(abs(a - b) for a, b in zip(curves["snn"], curves["relu"])) <= 1e-9
    assert curves["snn"][-1] < 0.5 * curves["snn"][0]  # it did learn
    for (name, snn_parameter), relu_parameter in zip(snn.named_parameters(), relu.parameters()):
        assert torch.max(torch.abs(snn_parameter - relu_parameter)) <= 1e-8, name


def test_window_rule_grows_only_and_chains():
    sizes = DEPTH_SIZES[2]
    snn = models.build_network(sizes, seed=21, dtype=DTYPE)
    relu = models.snn_to_relu(snn)
    images = random_images(32, sizes[0], seed=22)
    snn.train()
    with torch.no_grad():
        snn(images)
        _, activations = relu(images, return_activations=True)
    windows = snn.windows()
    for layer, activation in zip(snn.hidden_layers, activations[1:]):
        assert float(layer.window) >= 10 * float(activation.max()) - 1e-12
        assert float(layer.window) > 1.0  # grew from its initial length 1
    assert windows[0][0] == 1.0  # t_min(1) = t_max(0) of the input window [0, 1]
    for (_, previous_t_max), (t_min, _) in zip(windows, windows[1:]):
        assert t_min == previous_t_max
    assert windows[-1][0] == windows[-1][1] == snn.latency
    with torch.no_grad():
        snn(images * 0.1)  # smaller activations: windows never shrink
        assert snn.windows() == windows
        snn.eval()
        snn(images * 50)  # evaluation never changes windows; it saturates instead
        _, times = snn(images * 50, return_times=True)
    assert snn.windows() == windows
    assert any(mask.any() for mask in snn.saturated(times))
    state = snn.state_dict()
    assert {"layers.0.t_min", "layers.0.t_max", "layers.2.t_min", "input_t_max"} <= set(state)


def test_conversions_are_exact_both_ways():
    snn, images = trained_windows_network(DEPTH_SIZES[2], seed=31)
    relu = models.snn_to_relu(snn)
    back = models.relu_to_snn(relu, snn.windows())
    for key, value in snn.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    assert back.windows() == snn.windows()
    relu_again = models.snn_to_relu(back)
    for key, value in relu.state_dict().items():
        assert torch.equal(relu_again.state_dict()[key], value), key
    with pytest.raises(models.ModelError, match=r"layers\[1\]\.t_min"):
        models.relu_to_snn(relu, [(1.0, 2.0), (2.5, 3.0), (3.0, 3.0)])


def test_alpha1_gradient_is_b1_gradient_scaled_by_inverse_slope():
    generator = torch.Generator().manual_seed(41)
    b1 = TTFSDense(10, 6, t_min=2.0, t_max=10.0, dtype=DTYPE)
    alpha1 = Alpha1Dense(10, 6, t_min=2.0, t_max=10.0, dtype=DTYPE)
    with torch.no_grad():
        # Row sums from -0.3 to 2.4: slopes 1 + sum_j W_ij from 0.7 to 3.4.
        weight = 0.2 * torch.rand(6, 10, generator=generator, dtype=DTYPE)
        weight += (torch.linspace(-0.3, 2.4, 6, dtype=DTYPE) - weight.sum(dim=1))[:, None] / 10
        bias = 3.0 + torch.rand(6, generator=generator, dtype=DTYPE)
        for layer in (b1, alpha1):
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
    slope = alpha1.slope().detach()
    assert torch.allclose(slope, torch.linspace(0.7, 3.4, 6, dtype=DTYPE))
    t_in = 1.0 + torch.rand(8, 10, generator=generator, dtype=DTYPE)
    upstream = torch.randn(8, 6, generator=generator, dtype=DTYPE)
    grads = {}
    for name, layer in (("b1", b1), ("alpha1", alpha1)):
        inputs = t_in.clone().requires_grad_(True)
        times = layer(inputs)
        assert torch.all((times > layer.t_min) & (times < layer.t_max)), name  # none saturated
        (times * upstream).sum().backward()
        grads[name] = (layer.bias.grad.clone(), inputs.grad.clone())
    b1_bias, b1_input = grads["b1"]
    alpha1_bias, alpha1_input = grads["alpha1"]
    measured = alpha1_bias / b1_bias
    assert torch.max(torch.abs(measured - 1 / slope)) <= 1e-12
    # Through the input spike times too: d t_i / d t_j = W_ij / slope_i instead of W_ij.
    assert torch.max(torch.abs(alpha1_input - (upstream / slope) @ weight)) <= 1e-12
    assert torch.max(torch.abs(b1_input - upstream @ weight)) <= 1e-12
    # And alpha-1 is not the ReLU function: its spike times differ wherever slope != 1.
    with torch.no_grad():
        assert not torch.allclose(b1(t_in), alpha1(t_in))
