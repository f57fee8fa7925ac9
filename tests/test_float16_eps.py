"""The docs' "float16 and torch's default eps" paragraph: what torch and jrmsprop
do when eps=1e-8 and square_avg fall below float16's range, and the two remedies."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import jrmsprop

LR = 1e-2


def torch_first_step(grad, dtype=torch.float16, eps=1e-8):
    p = torch.ones(len(grad), dtype=dtype, requires_grad=True)
    opt = torch.optim.RMSprop([p], lr=LR, eps=eps)
    p.grad = torch.tensor(np.asarray(grad, np.float16)).to(dtype)
    opt.step()
    return p.detach().float().numpy(), opt.state[p]["square_avg"].float().numpy()


def jrmsprop_first_step(grad, dtype=jnp.float16, eps=1e-8):
    p = jnp.ones(len(grad), dtype)
    opt = jrmsprop.rmsprop(lr=LR, eps=eps)
    updates, state = opt.update(jnp.asarray(grad, jnp.float16), opt.init(p), p)
    as_f32 = lambda x: np.asarray(x, np.float32)
    return as_f32(optax.apply_updates(p, updates)), as_f32(state.square_avg), as_f32(updates)


def test_eps_1e_8_is_zero_in_float16():
    assert float(np.float16(1e-8)) == 0.0
    assert float(torch.tensor(1e-8, dtype=torch.float16)) == 0.0
    assert np.finfo(np.float16).smallest_normal == pytest.approx(6.1e-5, rel=1e-2)
    assert float(np.finfo(np.float16).smallest_subnormal) == pytest.approx(6e-8, rel=1e-2)


@pytest.mark.parametrize("magnitude", [1e-4, 1e-3, 1.7e-3])
def test_below_about_1_7e_3_square_avg_underflows_in_both(magnitude):
    grad = [magnitude, -magnitude]
    _, torch_sq = torch_first_step(grad)
    _, ours_sq, _ = jrmsprop_first_step(grad)
    assert not torch_sq.any() and not ours_sq.any()


@pytest.mark.parametrize("magnitude", [1.8e-3, 1e-2])
def test_above_it_square_avg_does_not(magnitude):
    grad = [magnitude, -magnitude]
    _, torch_sq = torch_first_step(grad)
    _, ours_sq, _ = jrmsprop_first_step(grad)
    assert (torch_sq > 0).all() and (ours_sq > 0).all()
    np.testing.assert_array_equal(ours_sq, torch_sq)


def test_torch_steps_to_inf_and_nan_jrmsprop_by_lr_g_over_eps():
    grad = np.array([0.0, 1e-3, -1e-3], np.float16)
    torch_p, _ = torch_first_step(grad)
    assert np.isnan(torch_p[0]) and torch_p[1] == -np.inf and torch_p[2] == np.inf
    ours_p, _, updates = jrmsprop_first_step(grad)
    assert np.isfinite(ours_p).all() and ours_p[0] == 1.0
    # lr * g / eps, computed in float32 with eps 1e-8: a million times the gradient.
    expected = (-np.float32(LR) * grad.astype(np.float32)) / np.float32(1e-8)
    np.testing.assert_allclose(updates, expected.astype(np.float16), rtol=1e-3)
    assert abs(updates[1]) > 0.99e6 * abs(float(grad[1]))


def test_eps_1e_4_agrees_with_torch_and_steps_by_lr_g_over_eps():
    grad = np.array([0.0, 1e-4, 1e-3, -1e-3, 1.7e-3, 3e-3, -0.05, 1.0], np.float16)
    torch_p, torch_sq = torch_first_step(grad, eps=1e-4)
    ours_p, ours_sq, updates = jrmsprop_first_step(grad, eps=1e-4)
    assert np.isfinite(torch_p).all()
    np.testing.assert_array_equal(ours_sq, torch_sq)
    torch.testing.assert_close(torch.tensor(ours_p), torch.tensor(torch_p), atol=1e-3, rtol=1e-3)
    underflowed = ours_sq == 0
    assert underflowed[1:5].all()
    np.testing.assert_allclose(
        updates[underflowed], -LR * grad[underflowed].astype(np.float32) / 1e-4, rtol=1e-3
    )


def test_float32_master_weights_with_float16_gradients_are_torchs_float32_run():
    grad = np.array([0.0, 1e-4, 1e-3, -1e-3, 1.7e-3, -0.05, 1.0], np.float16)
    torch_p, torch_sq = torch_first_step(grad, dtype=torch.float32)
    ours_p, ours_sq, updates = jrmsprop_first_step(grad, dtype=jnp.float32)
    assert (ours_sq[1:] > 0).all()
    torch.testing.assert_close(torch.tensor(ours_sq), torch.tensor(torch_sq))
    torch.testing.assert_close(torch.tensor(ours_p), torch.tensor(torch_p))
    # The first step of RMSprop: lr * g / sqrt((1 - alpha) g^2) = 10 lr in magnitude.
    np.testing.assert_allclose(np.abs(updates[1:]), 10 * LR, rtol=1e-3)
