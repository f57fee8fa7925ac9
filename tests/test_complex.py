"""Complex parameters as a port meets them: for a real loss, ``jax.grad`` gives
the conjugate of torch's ``.grad``, so a port must conjugate JAX's gradients.

The run is the docs': complex64 least squares, ``RMSprop(lr=1e-2,
centered=True, momentum=0.9)``, 500 steps, each framework computing its own
gradients. Naive gradients send the run elsewhere; conjugated ones give torch's
trajectory.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from torch.testing import assert_close

import jrmsprop

HYPER = {"lr": 1e-2, "centered": True, "momentum": 0.9}
STEPS = 500


def _problem(seed=0, m=16, n=4):
    rng = np.random.default_rng(seed)
    a = 0.3 * (rng.standard_normal((m, n)) + 1j * rng.standard_normal((m, n)))
    z_true = rng.standard_normal(n) + 1j * rng.standard_normal(n)
    noise = 0.01 * (rng.standard_normal(m) + 1j * rng.standard_normal(m))
    return a.astype(np.complex64), (a @ z_true + noise).astype(np.complex64)


A, B = _problem()


def _loss(z):
    r = A @ z - B
    return jnp.sum(r.real**2 + r.imag**2)


def _torch_run(dtype):
    z = torch.zeros(A.shape[1], dtype=dtype, requires_grad=True)
    opt = torch.optim.RMSprop([z], **HYPER)
    a, b = torch.tensor(A).to(dtype), torch.tensor(B).to(dtype)
    for _ in range(STEPS):
        opt.zero_grad()
        r = a @ z - b
        (r.real**2 + r.imag**2).sum().backward()
        opt.step()
    return z.detach().numpy()


def _jax_run(conj):
    opt = jrmsprop.rmsprop(**HYPER)

    @jax.jit
    def step(z, state):
        grads = jax.grad(_loss)(z)
        if conj:
            grads = jax.tree.map(jnp.conj, grads)
        updates, state = opt.update(grads, state, z)
        return optax.apply_updates(z, updates), state

    z = jnp.zeros(A.shape[1], jnp.complex64)
    state = opt.init(z)
    for _ in range(STEPS):
        z, state = step(z, state)
    return np.array(z)


@pytest.fixture(scope="module")
def torch_z():
    return _torch_run(torch.complex64)


def test_jax_grad_is_the_conjugate_of_torch_grad():
    z = (np.arange(4) - 1.5 + 1j * np.linspace(-1, 2, 4)).astype(np.complex64)
    tz = torch.tensor(z, requires_grad=True)
    r = torch.tensor(A) @ tz - torch.tensor(B)
    (r.real**2 + r.imag**2).sum().backward()
    jax_grad = np.array(jax.grad(_loss)(jnp.array(z)))
    assert_close(np.conj(jax_grad), tz.grad.numpy())
    assert np.abs(jax_grad.imag).min() > 1e-3  # not real: conjugation changes it


def test_the_run_is_well_conditioned(torch_z):
    # The premise of the comparison below: torch's own complex64 run ends where
    # its complex128 run does, so float rounding does not grow into a
    # different end point on this problem and assert_close can judge a port.
    assert_close(torch_z, _torch_run(torch.complex128).astype(np.complex64))


def test_naive_jax_grad_port_ends_far_from_torch(torch_z):
    naive = _jax_run(conj=False)
    torch_loss, naive_loss = float(_loss(torch_z)), float(_loss(naive))
    assert torch_loss < 0.01
    assert naive_loss > 1000 * float(_loss(jnp.zeros(4, jnp.complex64)))  # it diverged
    assert np.abs(naive - torch_z).max() > 1.0


def test_conjugated_jax_grad_port_matches_torch(torch_z):
    fixed = _jax_run(conj=True)
    assert_close(fixed, torch_z)
    assert_close(float(_loss(fixed)), float(_loss(torch_z)), rtol=1e-4, atol=0.0)
