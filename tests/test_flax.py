"""A flax.nnx model trained through nnx.Optimizer with jrmsprop equals the same
torch.nn model trained with torch.optim.RMSprop."""

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch.testing import assert_close

import jrmsprop

STEPS = 100
ROOT = Path(__file__).resolve().parents[1]


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        kw = {"param_dtype": jnp.float64, "dtype": jnp.float64, "rngs": rngs}
        self.hidden = nnx.Linear(3, 16, **kw)
        self.norm = nnx.LayerNorm(16, **kw)
        self.out = nnx.Linear(16, 1, **kw)

    def __call__(self, x):
        return self.out(jnp.tanh(self.norm(self.hidden(x))))


def _torch_copy(model: MLP) -> torch.nn.Sequential:
    """The same network in torch, weights copied (flax kernels are (in, out))."""
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 16), torch.nn.LayerNorm(16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
    ).double()
    with torch.no_grad():
        for layer, ours in ((net[0], model.hidden), (net[3], model.out)):
            layer.weight.copy_(torch.from_numpy(np.array(ours.kernel[...]).T))
            layer.bias.copy_(torch.from_numpy(np.array(ours.bias[...])))
        net[1].weight.copy_(torch.from_numpy(np.array(model.norm.scale[...])))
        net[1].bias.copy_(torch.from_numpy(np.array(model.norm.bias[...])))
    net[1].eps = model.norm.epsilon
    return net


@pytest.fixture
def one_torch_thread():
    """torch's intra-op threads only contend on these tiny tensors; one is fastest."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_nnx_optimizer_with_jrmsprop_trains_like_torch(one_torch_thread, x64):
    # Every state buffer in use: centered, momentum, and decay on all params.
    kwargs = {"lr": 1e-2, "centered": True, "momentum": 0.9, "weight_decay": 0.01}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3))
    y = np.sin(x.sum(axis=1, keepdims=True))

    model = MLP(nnx.Rngs(0))
    net = _torch_copy(model)
    optimizer = nnx.Optimizer(model, jrmsprop.rmsprop(**kwargs), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return jnp.mean((model(x) - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    torch_opt = torch.optim.RMSprop(net.parameters(), **kwargs)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    losses, torch_losses = [], []
    for _ in range(STEPS):
        losses.append(float(train_step(model, optimizer, jnp.asarray(x), jnp.asarray(y))))
        torch_opt.zero_grad()
        loss = torch.mean((net(tx) - ty) ** 2)
        loss.backward()
        torch_opt.step()
        torch_losses.append(loss.item())

    assert losses[-1] < 0.5 * losses[0]  # it trained
    assert_close(np.array(losses), np.array(torch_losses))
    pairs = [
        (model.hidden.kernel[...].T, net[0].weight), (model.hidden.bias[...], net[0].bias),
        (model.norm.scale[...], net[1].weight), (model.norm.bias[...], net[1].bias),
        (model.out.kernel[...].T, net[3].weight), (model.out.bias[...], net[3].bias),
    ]
    for ours, theirs in pairs:
        assert_close(np.array(ours), theirs.detach().numpy())
    # The optimizer state nnx keeps is jrmsprop's, with torch's buffers in it.
    rms_state = optimizer.opt_state
    square_avg = rms_state.square_avg["out"]["kernel"][...]
    assert_close(np.array(square_avg).T, torch_opt.state[net[3].weight]["square_avg"].numpy())
    assert int(optimizer.step[...]) == STEPS


def test_flax_example_runs(capsys):
    path = ROOT / "examples" / "flax_nnx.py"
    spec = importlib.util.spec_from_file_location("flax_nnx", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(steps=20)
    lines = [line for line in capsys.readouterr().out.splitlines() if "loss" in line]
    first, last = (float(line.split()[-1]) for line in lines)
    assert last < first
