"""The papers' hand-derived backward passes against JAX's autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpac_jax import tensor


def random_list(key, shapes):
  keys = jax.random.split(key, len(shapes))
  return [jax.random.normal(k, s) for k, s in zip(keys, shapes)]


@pytest.mark.slow
@pytest.mark.parametrize("shape,rank", [((3, 4, 5), 2), ((3, 3, 4, 6), 5),
                                        ((2, 3, 2, 3, 4), 3)])
def test_cp_factor_grads_closed_form_equals_autodiff(shape, rank):
  key_factors, key_target = jax.random.split(jax.random.key(sum(shape)))
  factors = random_list(key_factors, [(s, rank) for s in shape])
  target = jax.random.normal(key_target, shape)

  def loss(factors):  # any smooth loss of the kernel will do
    return jnp.sum(jnp.sin(tensor.cp_to_tensor(factors)) * target)

  kernel_grad = jax.grad(lambda x: jnp.sum(jnp.sin(x) * target))(
      tensor.cp_to_tensor(factors))
  closed = tensor.cp_factor_grads(factors, kernel_grad)
  auto = jax.grad(loss)(factors)
  for c, a in zip(closed, auto, strict=True):
    np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("shape,rank", [((3, 4, 5), (2, 3, 2)),
                                        ((28, 28, 12), (5, 5, 4)),
                                        ((3, 3, 4, 6), (2, 3, 4, 5))])
def test_tucker_grads_closed_form_equals_autodiff(shape, rank):
  key_core, key_factors, key_target = jax.random.split(
      jax.random.key(sum(shape)), 3)
  core = jax.random.normal(key_core, rank)
  factors = random_list(key_factors, list(zip(shape, rank)))
  target = jax.random.normal(key_target, shape)

  def loss(core, factors):
    return jnp.sum(jnp.tanh(tensor.tucker_to_tensor((core, factors))) * target)

  kernel_grad = jax.grad(lambda x: jnp.sum(jnp.tanh(x) * target))(
      tensor.tucker_to_tensor((core, factors)))
  core_closed, factors_closed = tensor.tucker_grads(core, factors, kernel_grad)
  core_auto, factors_auto = jax.grad(loss, argnums=(0, 1))(core, factors)
  np.testing.assert_allclose(core_closed, core_auto, rtol=1e-4, atol=1e-4)
  for c, a in zip(factors_closed, factors_auto, strict=True):
    np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_closed_form_comparison_fails_for_the_wrong_factors():
  # The comparisons above can fail: the code's closed form, handed factors
  # other than the kernel's, no longer matches autodiff.
  factors = random_list(jax.random.key(0), [(3, 2), (4, 2), (5, 2)])
  kernel_grad = jax.random.normal(jax.random.key(1), (3, 4, 5))
  auto = jax.grad(lambda f: jnp.sum(tensor.cp_to_tensor(f) * kernel_grad))(
      factors)
  np.testing.assert_allclose(tensor.cp_factor_grads(factors, kernel_grad)[0],
                             auto[0], rtol=1e-4, atol=1e-4)
  changed = [factors[0], factors[1], 2 * factors[2]]
  wrong = tensor.cp_factor_grads(changed, kernel_grad)
  assert not np.allclose(wrong[0], auto[0], atol=1e-3)
