"""cpac_jax.layers against the dense Flax layers they replace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cpac_jax as cj
from cpac_jax import tensor
from cpac_jax.functional import choose
from cpac_jax.functional.conv import (
  PATCHES_BELOW_CHANNELS,
  WINOGRAD_FROM_CHANNELS,
  WINOGRAD_FROM_TILES,
  conv_lowering,
)
from cpac_jax.layers import (
  CPConv,
  LowRankDense,
  TTConv,
  TTDense,
  TuckerConv,
  TuckerDense,
)

CONV_CASES = [  # kernel_size, strides, padding, dilation, spatial input
    ((3,), 1, "SAME", 1, (11,)),
    ((5,), 2, "VALID", 1, (16,)),
    ((3, 3), 1, "VALID", 1, (9, 9)),
    ((3, 3), 2, "SAME", 1, (10, 9)),
    ((3, 5), (1, 2), ((1, 2), (0, 3)), (2, 1), (12, 13)),
    ((1, 1), 1, "SAME", 1, (5, 5)),
    ((2, 3, 3), (1, 2, 1), 1, 1, (5, 7, 6)),
]


def make_conv(kind, cin, cout, kernel_size, strides, padding, dilation,
              rank=None, **kwargs):
  cls, default_rank = {"cp": (CPConv, 4), "tucker2": (TuckerConv, (3, 2)),
                       "tucker": (TuckerConv, None), "tt": (TTConv, 3)}[kind]
  if kind == "tucker":
    kwargs["factorize_spatial"] = True
    default_rank = tuple(min(2, k) for k in kernel_size) + (3, 2)
  return cls(cin, cout, kernel_size, strides, padding=padding,
             kernel_dilation=dilation, rank=rank or default_rank,
             rngs=nnx.Rngs(1), **kwargs)


def dense_twin(layer, kernel):
  """The nnx.Conv with the same setup, holding `kernel`."""
  conv = nnx.Conv(layer.in_features, layer.out_features, layer.kernel_size,
                  layer.strides, padding=layer.padding,
                  kernel_dilation=layer.kernel_dilation,
                  use_bias=layer.bias is not None, rngs=nnx.Rngs(0))
  conv.kernel[...] = kernel
  if layer.bias is not None:
    conv.bias[...] = layer.bias[...]
  return conv


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cp", "tucker2", "tucker", "tt"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_paths_agree_with_dense_conv(kind, case):
  kernel_size, strides, padding, dilation, spatial = case
  layer = make_conv(kind, 4, 6, kernel_size, strides, padding, dilation)
  layer.bias[...] = jnp.arange(6.0) / 10
  x = jax.random.normal(jax.random.key(0), (2,) + spatial + (4,))
  expected = dense_twin(layer, layer.kernel_tensor())(x)
  for implementation in ("factorized", "reconstructed", "auto"):
    layer.implementation = implementation
    np.testing.assert_allclose(layer(x), expected, rtol=1e-4, atol=1e-5)



@pytest.mark.slow
@pytest.mark.parametrize("case", CONV_CASES)
def test_patches_conv_computes_what_the_xla_conv_does(case):
  kernel_size, strides, padding, dilation, spatial = case
  layer = make_conv("cp", 4, 6, kernel_size, strides, padding, dilation,
                    conv_general_dilated=cj.layers.patches_conv)
  x = jax.random.normal(jax.random.key(0), (2,) + spatial + (4,))
  dense = dense_twin(layer, layer.kernel_tensor())
  expected, expected_grad = jax.value_and_grad(
      lambda x: jnp.sum(dense(x) ** 2))(x)
  dense.conv_general_dilated = cj.layers.patches_conv
  layer.implementation = "reconstructed"
  for conv in (dense, layer):  # as nnx.Conv and CPConv take it
    loss = lambda x, conv=conv: jnp.sum(conv(x) ** 2)
    value, grad = jax.value_and_grad(loss)(x)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("axis,stride,dilation,pad", [
    (1, 1, 1, (1, 1)), (2, 2, 1, (0, 1)), (1, 3, 2, (2, 0))])
def test_depthwise_gradients_are_those_of_a_grouped_conv(
    axis, stride, dilation, pad):
  # depthwise_along's kernel gradient is a custom VJP; XLA's grouped conv,
  # differentiated by JAX, is the reference.
  from jax import lax

  from cpac_jax.functional.conv import depthwise_along
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 5))
  kernel = jax.random.normal(jax.random.key(1), (3, 5))

  def grouped(x, kernel):
    shape = [1, 1, 1, 5]
    shape[axis - 1] = 3
    strides, dilations, pads = [1, 1], [1, 1], [(0, 0), (0, 0)]
    strides[axis - 1], dilations[axis - 1], pads[axis - 1] = (
        stride, dilation, pad)
    return lax.conv_general_dilated(
        x, jnp.reshape(kernel, shape), strides, pads,
        rhs_dilation=dilations, feature_group_count=5,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def loss(f):
    return lambda x, kernel: jnp.sum(jnp.sin(f(x, kernel)))
  ours = lambda x, kernel: depthwise_along(x, kernel, axis, stride, dilation,
                                           pad)
  np.testing.assert_allclose(ours(x, kernel), grouped(x, kernel), rtol=1e-5,
                             atol=1e-5)
  for got, want in zip(jax.grad(loss(ours), (0, 1))(x, kernel),
                       jax.grad(loss(grouped), (0, 1))(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("columns,transposed", [(3, True), (3, False),
                                                 (20, False), (20, True)])
def test_pointwise_gradients_are_those_of_einsum(columns, transposed):
  # pointwise's VJP is written by hand (few columns, transposed factors);
  # JAX's derivative of einsum is the reference, also under vmap.
  from cpac_jax.functional.conv import pointwise
  x = jax.random.normal(jax.random.key(0), (3, 4, 5, 8))
  matrix = jax.random.normal(jax.random.key(1), (columns, 8) if transposed
                             else (8, columns))

  def loss(f):
    return lambda x, m: jnp.sum(jnp.sin(f(x, m.T if transposed else m)))
  ours = lambda x, m: pointwise(x, m, precision="highest")
  einsum = lambda x, m: jnp.einsum("...c,cr->...r", x, m,
                                   precision="highest")
  np.testing.assert_allclose(ours(x, matrix.T if transposed else matrix),
                             einsum(x, matrix.T if transposed else matrix),
                             rtol=1e-6, atol=1e-5)
  for batched in (False, True):
    grad = lambda f: jax.grad(loss(f), (0, 1))
    if batched:
      grad = lambda f, grad=grad: jax.vmap(grad(f))
    args = (x, matrix) if not batched else (x, jnp.stack([matrix] * 3))
    for got, want in zip(grad(ours)(*args), grad(einsum)(*args)):
      assert got.shape == want.shape
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_pointwise_keeps_dtypes_through_its_gradients():
  from cpac_jax.functional.conv import pointwise
  x = jnp.ones((4, 8), jnp.bfloat16)
  matrix = jnp.ones((8, 3), jnp.float32)
  out = pointwise(x, matrix.astype(jnp.bfloat16),
                  preferred_element_type=jnp.float32)
  assert out.dtype == jnp.float32
  x_grad, matrix_grad = jax.grad(lambda x, m: jnp.sum(pointwise(
      x, m.astype(jnp.bfloat16), preferred_element_type=jnp.float32)),
      (0, 1))(x, matrix)
  assert (x_grad.dtype, matrix_grad.dtype) == (jnp.bfloat16, jnp.float32)
  np.testing.assert_allclose(x_grad.astype(jnp.float32), 3.0)
  np.testing.assert_allclose(matrix_grad, 4.0)


def test_patches_conv_rejects_what_it_cannot_compute():
  x, kernel = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 4))
  with pytest.raises(ValueError, match="not channels-last"):
    cj.layers.patches_conv(x, kernel, (1, 1), "SAME",
                           dimension_numbers=("NCHW", "OIHW", "NCHW"))
  with pytest.raises(ValueError, match="feature_group_count 2"):
    cj.layers.patches_conv(x, jnp.ones((3, 3, 1, 4)), (1, 1), "SAME",
                           feature_group_count=2)


@pytest.mark.slow
@pytest.mark.parametrize("spatial,padding", [
    ((8, 8), "SAME"), ((7, 10), "SAME"), ((9, 6), "VALID"),
    ((5, 13), ((0, 2), (3, 1))), ((2, 3), "SAME")])
def test_winograd_conv_computes_what_the_xla_conv_does(spatial, padding):
  # Tiles that overhang the output (7, 10, 13 are no multiples of 4), a map
  # smaller than a tile, asymmetric and VALID padding; the gradients are
  # winograd_conv's custom VJP.
  k1, k2 = jax.random.split(jax.random.key(0))
  x = jax.random.normal(k1, (2,) + spatial + (5,))
  kernel = jax.random.normal(k2, (3, 3, 5, 6))

  def loss(lowering, precision=None):
    return lambda x, kernel: jnp.sum(lowering(
        x, kernel, (1, 1), padding, precision=precision,
        dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)

  want = jax.value_and_grad(loss(jax.lax.conv_general_dilated, "highest"),
                            argnums=(0, 1))(x, kernel)
  got = jax.jit(jax.value_and_grad(loss(cj.layers.winograd_conv),
                                   argnums=(0, 1)))(x, kernel)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-4)
  for g, w in zip(got[1], want[1]):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())
  # As nnx.Conv and a reconstructed CPConv take it.
  layer = make_conv("cp", 5, 6, (3, 3), 1, padding, 1,
                    implementation="reconstructed",
                    conv_general_dilated=cj.layers.winograd_conv)
  dense = dense_twin(layer, layer.kernel_tensor())
  expected = dense(x)
  dense.conv_general_dilated = cj.layers.winograd_conv
  for conv in (dense, layer):
    np.testing.assert_allclose(conv(x), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())


@pytest.mark.slow
def test_winograd_conv_rounds_within_5e_5_of_the_largest_output():
  # Against a float64 conv (numpy, tap by tap), 128 channels: the
  # transforms' coefficients (up to 8 and 1/24) cost winograd_conv about
  # 20x a direct conv's float32 error, which stays far below this bound.
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 8, 8, 128)).astype(np.float32)
  kernel = (rng.standard_normal((3, 3, 128, 128)) / 34).astype(np.float32)
  padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  exact = sum(padded[:, i:i + 8, j:j + 8] @ kernel[i, j].astype(np.float64)
              for i in range(3) for j in range(3))
  errors = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    for lowering in (jax.lax.conv_general_dilated, cj.layers.winograd_conv):
      y = lowering(x.astype(dtype), kernel.astype(dtype), (1, 1), "SAME",
                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
      assert y.dtype == dtype
      error = np.abs(np.asarray(y, np.float64) - exact).max()
      errors[dtype, lowering] = error / np.abs(exact).max()
  assert errors[jnp.float32, cj.layers.winograd_conv] < 5e-5
  assert errors[jnp.float32, jax.lax.conv_general_dilated] < 5e-6
  # In bfloat16 the transforms run in float32: no worse than XLA's conv.
  assert (errors[jnp.bfloat16, cj.layers.winograd_conv]
          <= 1.1 * errors[jnp.bfloat16, jax.lax.conv_general_dilated])


def test_winograd_conv_rejects_what_it_cannot_compute():
  x, kernel = jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 4))
  channels_last = ("NHWC", "HWIO", "NHWC")
  with pytest.raises(ValueError, match="not channels-last"):
    cj.layers.winograd_conv(x, kernel, (1, 1), "SAME",
                            dimension_numbers=("NCHW", "OIHW", "NCHW"))
  with pytest.raises(ValueError, match=r"strides \(2, 2\)"):
    cj.layers.winograd_conv(x, kernel, (2, 2), "SAME",
                            dimension_numbers=channels_last)
  with pytest.raises(ValueError, match=r"kernel size \(5, 5\)"):
    cj.layers.winograd_conv(x, jnp.ones((5, 5, 2, 4)), (1, 1), "SAME",
                            dimension_numbers=channels_last)
  with pytest.raises(ValueError, match=r"rhs_dilation \(2, 2\)"):
    cj.layers.winograd_conv(x, kernel, (1, 1), "SAME", rhs_dilation=(2, 2),
                            dimension_numbers=channels_last)


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU rule")
def test_wide_3x3_convs_over_many_tiles_run_as_winograd_on_the_cpu():
  wide, size = WINOGRAD_FROM_CHANNELS, (16, 16)  # 16 tiles an image
  batch = WINOGRAD_FROM_TILES // 16
  assert conv_lowering(wide, size, (3, 3), batch=batch) is (
      cj.layers.winograd_conv)
  xla = jax.lax.conv_general_dilated
  assert conv_lowering(wide - 1, size, (3, 3), batch=batch) is xla
  assert conv_lowering(wide, size, (3, 3), batch=batch - 1) is xla
  assert conv_lowering(wide, size, (3, 3)) is xla  # batch unknown
  assert conv_lowering(wide, size, (3, 3), strides=(2, 2), batch=batch) is xla
  assert conv_lowering(wide, size, (5, 5), batch=batch) is xla
  # nnx.Conv through auto_conv_general_dilated, and a reconstructed CP
  # conv: no XLA convolution left in either's jaxpr at such a shape.
  x = jnp.ones((batch,) + size + (wide,))
  auto = nnx.Conv(wide, 8, (3, 3), rngs=nnx.Rngs(0),
                  conv_general_dilated=cj.layers.auto_conv_general_dilated)
  cp = CPConv(wide, 8, (3, 3), rank=4, implementation="reconstructed",
              rngs=nnx.Rngs(0))
  for conv in (auto, cp):
    assert "conv_general_dilated" not in str(jax.make_jaxpr(conv)(x))


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU rule")
def test_convs_below_eight_input_channels_run_as_patches_on_the_cpu():
  assert conv_lowering(PATCHES_BELOW_CHANNELS - 1) is cj.layers.patches_conv
  assert conv_lowering(PATCHES_BELOW_CHANNELS) is jax.lax.conv_general_dilated
  # The core conv of a rank-(4, 4) Tucker-2 conv goes through patches_conv:
  # its jaxpr holds the patches' slices and no convolution.
  layer = TuckerConv(16, 16, (3, 3), rank=(4, 4), rngs=nnx.Rngs(0),
                     implementation="factorized")
  jaxpr = str(jax.make_jaxpr(layer)(jnp.ones((1, 6, 6, 16))))
  assert "conv_general_dilated" not in jaxpr and "slice" in jaxpr
  wide = TuckerConv(16, 16, (3, 3), rank=(8, 8), rngs=nnx.Rngs(0),
                    implementation="factorized")
  assert "conv_general_dilated" in str(
      jax.make_jaxpr(wide)(jnp.ones((1, 6, 6, 16))))
  # A trained nnx.Conv on XLA's default conv takes the per-conv rule along;
  # one on an explicit lowering keeps it.
  dense = nnx.Conv(16, 16, (3, 3), rngs=nnx.Rngs(0))
  assert TuckerConv.from_conv(dense, (4, 4)).conv_general_dilated is None
  dense.conv_general_dilated = cj.layers.patches_conv
  assert (CPConv.from_conv(dense, 4).conv_general_dilated
          is cj.layers.patches_conv)


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU rule")
def test_convs_of_maps_smaller_than_their_kernel_run_as_patches_on_the_cpu():
  assert conv_lowering(512, (2, 2), (3, 3)) is cj.layers.patches_conv
  assert conv_lowering(512, (3, 3), (3, 3)) is jax.lax.conv_general_dilated
  # A dense nnx.Conv through auto_conv_general_dilated: XLA's values, by
  # patches_conv on a 2x2 map and by XLA's conv on a 4x4 one.
  auto = nnx.Conv(16, 16, (3, 3), rngs=nnx.Rngs(0),
                  conv_general_dilated=cj.layers.auto_conv_general_dilated)
  xla = nnx.Conv(16, 16, (3, 3), rngs=nnx.Rngs(0))
  for size, by_xla in ((2, False), (4, True)):
    x = jax.random.normal(jax.random.key(size), (2, size, size, 16))
    np.testing.assert_allclose(auto(x), xla(x), rtol=1e-5, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(auto)(x))
    assert ("conv_general_dilated" in jaxpr) == by_xla, size
  # What patches_conv can't compute stays XLA's: a grouped conv.
  grouped = nnx.Conv(16, 16, (3, 3), feature_group_count=4,
                     rngs=nnx.Rngs(0),
                     conv_general_dilated=cj.layers.auto_conv_general_dilated)
  assert "conv_general_dilated" in str(
      jax.make_jaxpr(grouped)(jnp.ones((1, 2, 2, 16))))
  # Compressing such a conv takes the per-conv rule along.
  assert CPConv.from_conv(auto, 4).conv_general_dilated is None


@pytest.mark.slow
def test_ttl_paths_agree_with_dense_matmul():
  ttl = TuckerDense(in_shape=(4, 7), out_shape=(3, 5), rank=(2, 3, 2, 4),
                    rngs=nnx.Rngs(0))
  ttl.bias[...] = jnp.arange(15.0)
  x = jax.random.normal(jax.random.key(0), (6, 28))
  weight = jnp.reshape(ttl.weight_tensor(), (28, 15))
  expected = x @ weight + ttl.bias[...]
  for implementation in ("factorized", "reconstructed", "auto"):
    ttl.implementation = implementation
    np.testing.assert_allclose(ttl(x), expected, rtol=1e-4, atol=1e-5)
    tensorized = ttl(jnp.reshape(x, (6, 4, 7)))
    assert tensorized.shape == (6, 3, 5)
    np.testing.assert_allclose(jnp.reshape(tensorized, (6, 15)), expected,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("rank", [1, 3, (1, 5, 3, 1), "same"])
def test_tt_dense_paths_agree_with_dense_matmul(rank):
  tt = TTDense(in_shape=(4, 7, 2), out_shape=(3, 5, 2), rank=rank,
               rngs=nnx.Rngs(0))
  tt.bias[...] = jnp.arange(30.0) / 10
  x = jax.random.normal(jax.random.key(0), (6, 56))
  weight = jnp.reshape(tt.weight_tensor(), (56, 30))
  expected = x @ weight + tt.bias[...]
  for implementation in ("factorized", "reconstructed", "auto"):
    tt.implementation = implementation
    np.testing.assert_allclose(tt(x), expected, rtol=1e-4, atol=1e-5)
    tensorized = tt(jnp.reshape(x, (6, 4, 7, 2)))
    assert tensorized.shape == (6, 3, 5, 2)
    np.testing.assert_allclose(jnp.reshape(tensorized, (6, 30)), expected,
                               rtol=1e-4, atol=1e-5)


TT_PLAN_CASES = [  # in_shape, out_shape, TT ranks (boundary 1s included)
    ((5,), (3,), (1, 1)),
    ((4, 3), (5, 2), (1, 2, 1)),
    ((2, 3, 2), (2, 2, 3), (1, 2, 3, 1)),
    ((2, 3, 2, 2), (3, 2, 1, 2), (1, 3, 2, 4, 1)),
]


def _tt_cores(in_shape, out_shape, ranks, seed=0):
  """Random float32 cores (r_k, in_k, out_k, r_{k+1})."""
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.standard_normal((ranks[k], i, o, ranks[k + 1])),
                      jnp.float32)
          for k, (i, o) in enumerate(zip(in_shape, out_shape))]


@pytest.mark.parametrize("in_shape, out_shape, ranks", TT_PLAN_CASES)
def test_tt_dense_every_plan_computes_the_rebuilt_matmul(in_shape, out_shape,
                                                         ranks):
  cores = _tt_cores(in_shape, out_shape, ranks)
  x = jnp.asarray(np.random.default_rng(1).standard_normal(
      (3, int(np.prod(in_shape)))), jnp.float32)
  weight = np.reshape(tensor.tt_matrix_to_tensor(cores),
                      (x.shape[1], int(np.prod(out_shape))))
  expected = np.asarray(x) @ weight
  plans = cj.functional.tt_dense_plans(x.shape, in_shape, out_shape, ranks)
  assert len(plans) == 2 ** len(in_shape)
  assert len({(plan.groups, plan.direction) for plan in plans}) == len(plans)
  # one compilation for all the plans: eager, each einsum compiles alone
  outputs = jax.jit(lambda x, cores: [cj.functional.tt_dense_by_plan(
      x, cores, plan.groups, plan.direction,
      precision=jax.lax.Precision.HIGHEST) for plan in plans])(x, cores)
  for plan, y in zip(plans, outputs):
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5,
                               err_msg=str(plan))


@pytest.mark.parametrize("in_shape, out_shape, ranks", TT_PLAN_CASES)
@pytest.mark.parametrize("batch", [1, 64, 4096])
def test_tt_dense_runs_the_cheapest_plan(in_shape, out_shape, ranks, batch,
                                         monkeypatch):
  """"auto" runs the plan of least cost of all, "factorized" the one of
  least cost of two groups or more (one core: its one group); the flops
  "auto" weighs name those plans."""
  functional = cj.functional
  shape = (batch, int(np.prod(in_shape)))
  plans = functional.tt_dense_plans(shape, in_shape, out_shape, ranks)
  fewest = min(2, len(in_shape))
  cheapest = min(plan.cost for plan in plans)
  cheapest_factorized = min(plan.cost for plan in plans
                            if len(plan.groups) >= fewest)
  ran = []
  monkeypatch.setattr(
      cj.functional.tt, "tt_dense_by_plan",
      lambda x, cores, groups, direction, precision: ran.append(
          (groups, direction)))
  cores = _tt_cores(in_shape, out_shape, ranks)
  for implementation in ("auto", "factorized", "reconstructed"):
    plan = functional.tt_dense_plan(shape, in_shape, out_shape, ranks,
                                    implementation)
    functional.tt_dense(jnp.zeros(shape), cores,
                        implementation=implementation)
    assert ran.pop() == (plan.groups, plan.direction)
    if implementation == "auto":
      assert plan.cost == cheapest
    elif implementation == "factorized":
      assert len(plan.groups) >= fewest and plan.cost == cheapest_factorized
    else:
      assert plan.groups == (tuple(range(len(in_shape))),)
  flops = functional.tt_dense_flops(shape, in_shape, out_shape, ranks)
  auto = functional.tt_dense_plan(shape, in_shape, out_shape, ranks)
  assert (choose("auto", flops) == "reconstructed") == (len(auto.groups) == 1)
  merged = [i * o for i, o in zip(in_shape, out_shape)]
  assert flops["reconstructed"] == (
      flops["dense"] + functional.tt.tt_rebuild_flops(merged, ranks))


def test_tt_dense_plan_counts_match_a_hand_count():
  plans = {(plan.groups, plan.direction): plan
           for plan in cj.functional.tt_dense_plans((8, 12), (4, 3), (5, 2),
                                                    (1, 2, 1))}
  # one core a group, left to right: 8 * 3 * (1*4*5*2) + 8 * 5 * (2*3*2*1);
  # written between them: 8 * 5 * 2 * 3
  left = plans[((0,), (1,)), "left_to_right"]
  assert (left.merge, left.contraction, left.intermediates) == (0, 1440, 240)
  # right to left: 8 * 4 * (2*3*2*1) + 8 * 2 * (1*4*5*2); written 8 * 4*2*2
  right = plans[((0,), (1,)), "right_to_left"]
  assert (right.merge, right.contraction, right.intermediates) == (
      0, 1024, 128)
  # one group: the rebuild 1 * 20 * 2 * 6 * 1, then 8 * 12 * 10
  rebuilt = plans[((0, 1),), "left_to_right"]
  assert (rebuilt.merge, rebuilt.contraction, rebuilt.intermediates) == (
      240, 960, 0)
  # cores 1 and 2 merged (left rank 2): 2 * (3*2) * 3 * (2*3) * 1; then
  # 3 * 6 * (1*2*2*2) + 3 * 2 * (2*6*6*1), written 3 * 2*2*6
  plan = next(plan for plan in cj.functional.tt_dense_plans(
      (3, 12), (2, 3, 2), (2, 2, 3), (1, 2, 3, 1))
      if plan.groups == ((0,), (1, 2)) and plan.direction == "left_to_right")
  assert (plan.merge, plan.contraction, plan.intermediates) == (216, 576, 72)
  assert plan.macs == 792
  assert plan.cost == 792 + cj.functional.INTERMEDIATE_COST * 72


def _largest_value(function, *args) -> int:
  """The most elements of any value the traced `function` computes."""
  jaxpr = jax.make_jaxpr(function)(*args)
  return max(int(np.prod(var.aval.shape)) for eqn in jaxpr.eqns
             for var in eqn.outvars)


@pytest.mark.parametrize("batch", [1, 512])
def test_tt_dense_factorized_never_forms_the_weight(batch):
  """Even where the rebuilt weight is the cheapest plan, "factorized" runs
  two groups or more, and no value it computes is as large as the weight;
  "reconstructed" forms it."""
  in_shape, out_shape, ranks = (4, 4, 4), (4, 4, 4), (1, 2, 2, 1)
  cores = _tt_cores(in_shape, out_shape, ranks)
  x = jnp.ones((batch, 64))
  plan = cj.functional.tt_dense_plan(x.shape, in_shape, out_shape, ranks,
                                     "factorized")
  assert len(plan.groups) >= 2
  if batch == 512:
    assert len(cj.functional.tt_dense_plan(x.shape, in_shape, out_shape,
                                           ranks).groups) == 1
  factorized = _largest_value(lambda x, *cores: cj.functional.tt_dense(
      x, cores, implementation="factorized"), x[:1], *cores)
  reconstructed = _largest_value(lambda x, *cores: cj.functional.tt_dense(
      x, cores, implementation="reconstructed"), x[:1], *cores)
  assert factorized < 64 * 64 <= reconstructed


def test_tt_dense_by_plan_rejects_a_plan_that_is_no_cut():
  cores = _tt_cores((2, 3, 2), (2, 2, 3), (1, 2, 3, 1))
  x = jnp.ones((1, 12))
  for groups in ([(0,), (2,), (1,)], [(0, 1)], [(0,), (), (1, 2)]):
    with pytest.raises(ValueError, match="contiguous groups"):
      cj.functional.tt_dense_by_plan(x, cores, groups, "left_to_right")
  with pytest.raises(ValueError, match="direction 'up'"):
    cj.functional.tt_dense_by_plan(x, cores, [(0, 1, 2)], "up")
  with pytest.raises(ValueError, match="implementation 'fastest'"):
    cj.functional.tt_dense_plan((1, 12), (2, 3, 2), (2, 2, 3),
                                (1, 2, 3, 1), "fastest")

@pytest.mark.slow
def test_layers_keep_extra_batch_axes_and_accept_unbatched_channels():
  conv = CPConv(3, 5, (3, 3), rank=2, rngs=nnx.Rngs(0))
  assert conv(jnp.ones((2, 4, 8, 8, 3))).shape == (2, 4, 8, 8, 5)
  ttl = TuckerDense((4, 4), (6,), rank=2, rngs=nnx.Rngs(0))
  assert ttl(jnp.ones((2, 3, 16))).shape == (2, 3, 6)


@pytest.mark.slow
def test_cp_from_conv_reproduces_exactly_low_rank_kernel():
  dense = nnx.Conv(6, 8, (3, 3), padding="VALID", rngs=nnx.Rngs(0))
  factors = [jax.random.normal(k, (s, 3)) for k, s in zip(
      jax.random.split(jax.random.key(2), 4), (3, 3, 6, 8))]
  dense.kernel[...] = tensor.cp_to_tensor(factors) / 10
  dense.bias[...] = jnp.linspace(-1, 1, 8)
  layer = CPConv.from_conv(dense, rank=3, n_iter_max=300, tol=1e-10)
  x = jax.random.normal(jax.random.key(3), (2, 10, 10, 6))
  np.testing.assert_allclose(layer(x), dense(x), rtol=1e-3, atol=1e-4)
  assert layer.padding == "VALID"


@pytest.mark.slow
def test_cp_from_conv_at_full_rank_of_a_1x1_conv_is_exact():
  dense = nnx.Conv(5, 7, (1, 1), rngs=nnx.Rngs(0))
  layer = CPConv.from_conv(dense, rank=5, n_iter_max=100, tol=0.0)
  x = jax.random.normal(jax.random.key(3), (2, 4, 4, 5))
  np.testing.assert_allclose(layer(x), dense(x), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("factorize_spatial", [False, True])
def test_tucker_from_conv_at_full_rank_is_exact(factorize_spatial):
  dense = nnx.Conv(6, 8, (3, 3), strides=2, rngs=nnx.Rngs(0))
  rank = (3, 3, 6, 8) if factorize_spatial else (6, 8)
  layer = TuckerConv.from_conv(dense, rank=rank,
                               factorize_spatial=factorize_spatial)
  x = jax.random.normal(jax.random.key(3), (2, 9, 9, 6))
  np.testing.assert_allclose(layer(x), dense(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_ttl_from_linear_at_full_rank_is_exact():
  dense = nnx.Linear(784, 30, rngs=nnx.Rngs(0))
  dense.bias[...] = jnp.linspace(-1, 1, 30)
  ttl = TuckerDense.from_linear(dense, in_shape=(28, 28), out_shape=(30,),
                                rank=(28, 28, 30))
  x = jax.random.normal(jax.random.key(3), (5, 784))
  np.testing.assert_allclose(ttl(x), dense(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_ttl_from_linear_low_rank_is_the_best_fit_of_the_kernel():
  dense = nnx.Linear(784, 30, rngs=nnx.Rngs(0))
  ttl = TuckerDense.from_linear(dense, in_shape=(28, 28), out_shape=(30,),
                                rank=(5, 5, 10))
  kernel = jnp.reshape(dense.kernel[...], (28, 28, 30))
  error = jnp.linalg.norm(ttl.weight_tensor() - kernel)
  best = tensor.tucker(kernel, (5, 5, 10))
  assert float(error) <= float(
      jnp.linalg.norm(tensor.tucker_to_tensor(best) - kernel)) * 1.0001


@pytest.mark.slow
def test_tt_from_conv_and_from_linear_at_full_rank_are_exact():
  conv = nnx.Conv(5, 7, (3, 2), strides=(2, 1), padding="VALID",
                  rngs=nnx.Rngs(0))
  conv.bias[...] = jnp.arange(7.0)
  tt = TTConv.from_conv(conv, rank=10**6)
  assert tt.rank == tensor.tt_max_ranks((5, 3, 2, 7))
  assert (tt.strides, tt.padding) == ((2, 1), "VALID")
  np.testing.assert_allclose(tt.kernel_tensor(), conv.kernel[...], atol=1e-5)
  x = jax.random.normal(jax.random.key(1), (2, 9, 8, 5))
  np.testing.assert_allclose(tt(x), conv(x), rtol=1e-4, atol=1e-4)
  dense = nnx.Linear(28, 15, rngs=nnx.Rngs(0))
  tt = TTDense.from_linear(dense, in_shape=(4, 7), out_shape=(3, 5),
                           rank=12)
  np.testing.assert_allclose(jnp.reshape(tt.weight_tensor(), (28, 15)),
                             dense.kernel[...], atol=1e-5)
  np.testing.assert_allclose(tt.bias[...], dense.bias[...])


@pytest.mark.slow
def test_tt_from_linear_low_rank_matches_tt_svd_error():
  """The layer holds exactly the truncated TT-SVD of its kernel."""
  dense = nnx.Linear(64, 36, rngs=nnx.Rngs(0))
  tt = TTDense.from_linear(dense, in_shape=(4, 4, 4), out_shape=(3, 3, 4),
                           rank=3)
  cores = tensor.tt_matrix_svd(dense.kernel[...], (4, 4, 4), (3, 3, 4), 3)
  np.testing.assert_allclose(tt.weight_tensor(),
                             tensor.tt_matrix_to_tensor(cores), atol=1e-6)
  error = jnp.linalg.norm(jnp.reshape(tt.weight_tensor(), (64, 36))
                          - dense.kernel[...])
  assert 0.1 < float(error / jnp.linalg.norm(dense.kernel[...])) < 1


@pytest.mark.slow
def test_from_linear_rejects_shapes_that_dont_match():
  dense = nnx.Linear(784, 30, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="784 -> 30"):
    TuckerDense.from_linear(dense, in_shape=(28, 27), out_shape=(30,), rank=2)
  with pytest.raises(ValueError, match="784 -> 30"):
    TTDense.from_linear(dense, in_shape=(28, 27), out_shape=(5, 6), rank=2)


@pytest.mark.slow
@pytest.mark.parametrize("rank", [1, 4, 16])
@pytest.mark.parametrize("kind", ["cp", "tucker2", "tucker", "ttl", "tt",
                                  "tt_dense", "low_rank"])
def test_init_matches_flax_default_variance_at_any_rank(kind, rank):
  variances = []
  for seed in range(16):
    rngs = nnx.Rngs(seed)
    if kind == "ttl":
      layer = TuckerDense((16, 16), (32,), rank=min(rank, 16), rngs=rngs)
      weight, fan_in = layer.weight_tensor(), 256
    elif kind == "tt_dense":
      layer = TTDense((4, 8, 8), (4, 4, 2), rank=rank, rngs=rngs)
      weight, fan_in = layer.weight_tensor(), 256
    elif kind == "low_rank":
      layer = LowRankDense((16, 16), 32, rank=rank, rngs=rngs)
      weight, fan_in = layer.weight_tensor(), 256
    else:
      if kind == "cp":
        layer = CPConv(32, 32, (3, 3), rank=rank, rngs=rngs)
      elif kind == "tt":
        layer = TTConv(32, 32, (3, 3), rank=rank, rngs=rngs)
      else:
        spatial = (min(rank, 3),) * 2 if kind == "tucker" else ()
        layer = TuckerConv(32, 32, (3, 3), rank=spatial + (rank, rank),
                           factorize_spatial=kind == "tucker", rngs=rngs)
      weight, fan_in = layer.kernel_tensor(), 9 * 32
    variances.append(float(jnp.mean(weight**2)) * fan_in)
  np.testing.assert_allclose(np.mean(variances), 1.0, rtol=0.2)


def layers_under_test():
  return [
      CPConv(3, 4, (3, 3), rank=2, rngs=nnx.Rngs(0)),
      TuckerConv(3, 4, (3, 3), rank=(2, 3), rngs=nnx.Rngs(0)),
      TuckerDense((4, 12), (4,), rank=(2, 3, 2), rngs=nnx.Rngs(0)),
      TTConv(3, 4, (3, 3), rank=2, rngs=nnx.Rngs(0)),
      TTDense((4, 12), (2, 2), rank=3, rngs=nnx.Rngs(0)),
      LowRankDense((4, 12), 4, rank=3, rngs=nnx.Rngs(0)),
  ]


def inputs_for(layer, batch=2):
  if isinstance(layer, (TuckerDense, TTDense, LowRankDense)):
    return jax.random.normal(jax.random.key(0), (batch, 48))
  return jax.random.normal(jax.random.key(0), (batch, 6, 6, 3))


@pytest.mark.slow
@pytest.mark.parametrize("layer", layers_under_test(),
                         ids=lambda layer: type(layer).__name__)
@pytest.mark.parametrize("implementation", ["factorized", "reconstructed"])
def test_layers_work_under_jit_grad_and_vmap(layer, implementation):
  layer.implementation = implementation
  graphdef, params = nnx.split(layer)
  x = inputs_for(layer)
  apply = lambda params, x: nnx.merge(graphdef, params)(x)
  eager = layer(x)
  np.testing.assert_allclose(jax.jit(apply)(params, x), eager, rtol=1e-5,
                             atol=1e-6)
  stacked = jnp.stack([x, 2 * x])
  mapped = jax.vmap(apply, in_axes=(None, 0))(params, stacked)
  np.testing.assert_allclose(mapped[1], layer(2 * x), rtol=1e-5, atol=1e-5)
  grads = jax.grad(lambda p: jnp.sum(apply(p, x) ** 2))(params)
  leaves = jax.tree.leaves(grads)
  assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert any(float(jnp.abs(g).max()) > 0 for g in leaves)
  # vmap over parameters too: a stack of models, as a seed sweep uses.
  twice = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), params)
  both = jax.vmap(apply, in_axes=(0, None))(twice, x)
  np.testing.assert_allclose(both[0], eager, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("layer", layers_under_test(),
                         ids=lambda layer: type(layer).__name__)
def test_layers_run_in_bfloat16(layer):
  x = inputs_for(layer)
  reference = layer(x)
  layer.dtype = jnp.bfloat16
  out = layer(x.astype(jnp.bfloat16))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), reference, rtol=0.1,
                             atol=0.1 * float(jnp.abs(reference).max()))


def test_bfloat16_params_give_bfloat16_outputs():
  conv = CPConv(3, 4, (3, 3), rank=2, param_dtype=jnp.bfloat16,
                rngs=nnx.Rngs(0))
  assert conv.in_factor[...].dtype == jnp.bfloat16
  assert conv(jnp.ones((1, 5, 5, 3), jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.slow
def test_auto_picks_the_cheaper_path():
  cheap = CPConv(256, 256, (3, 3), rank=16, rngs=nnx.Rngs(0))
  flops = cheap.flops((8, 16, 16, 256))
  assert flops["factorized"] < flops["dense"] / 10
  assert choose("auto", flops) == "factorized"
  costly = CPConv(4, 4, (3, 3), rank=64, rngs=nnx.Rngs(0))
  flops = costly.flops((8, 16, 16, 4))
  assert flops["reconstructed"] < flops["factorized"]
  assert choose("auto", flops) == "reconstructed"
  # 2x compression: half the dense multiply-adds, but three intermediates of
  # 137 channels to write and read back; the rebuilt kernel is faster.
  wide = CPConv(64, 64, (3, 3), rank=137, rngs=nnx.Rngs(0))
  flops = wide.flops((32, 32, 32, 64))
  assert flops["factorized"] < flops["reconstructed"] / 2
  assert choose("auto", flops) == "reconstructed"
  assert choose("factorized", flops) == "factorized"
  ttl = TuckerDense((28, 28), (300,), rank=(5, 5, 10), rngs=nnx.Rngs(0))
  flops = ttl.flops((128, 784))
  assert flops == ttl.flops((128, 28, 28))  # flat or tensorized input
  assert flops["factorized"] < flops["dense"] / 20
  tt = TTConv(256, 256, (3, 3), rank=0.1, rngs=nnx.Rngs(0))
  flops = tt.flops((8, 16, 16, 256))
  assert flops["factorized"] < flops["dense"] / 5
  assert choose("auto", flops) == "factorized"
  tt = TTDense((4, 7, 4, 7), (2, 5, 5, 6), rank=4, rngs=nnx.Rngs(0))
  flops = tt.flops((128, 784))
  assert flops["factorized"] < flops["dense"] / 3
  assert flops == tt.flops((128, 4, 7, 4, 7))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU rule")
def test_auto_prices_each_conv_at_the_lowering_that_runs_it():
  # TTConv 256->256 on 16x16 at 2x, batch 32: its factorized path does half
  # the dense multiply-adds, but the rebuilt kernel's conv runs as
  # winograd_conv, at WINOGRAD_COST of them; through XLA's conv it would not
  shape = (32, 16, 16, 256)
  winograd = TTConv(256, 256, (3, 3), rank=0.5, rngs=nnx.Rngs(0))
  xla = TTConv(256, 256, (3, 3), rank=0.5, rngs=nnx.Rngs(0),
               conv_general_dilated=jax.lax.conv_general_dilated)
  flops, xla_flops = winograd.flops(shape), xla.flops(shape)
  assert flops["reconstructed_saved"] == round(
      flops["dense"] * (1 - cj.functional.conv.WINOGRAD_COST))
  assert xla_flops["reconstructed_saved"] == 0
  assert flops["factorized"] < flops["reconstructed"] / 2
  assert choose("auto", flops) == "reconstructed"
  assert choose("auto", xla_flops) == "factorized"
  assert winograd(jnp.ones(shape)).shape == shape  # and runs it
  # a Tucker-2 conv's core conv of 64 -> 64 channels runs as winograd too;
  # one of 32 -> 32 (below WINOGRAD_FROM_CHANNELS) does not
  for ranks, saved in (((64, 64), True), ((32, 32), False)):
    tucker = TuckerConv(256, 256, (3, 3), rank=ranks, rngs=nnx.Rngs(0))
    assert (tucker.flops(shape)["factorized_saved"] > 0) == saved


@pytest.mark.parametrize("make,match", [
    (lambda: CPConv(3, 4, (3, 3), rank=0, rngs=nnx.Rngs(0)), "CP rank 0"),
    (lambda: CPConv(3, 4, (3, 3), rank=2, padding="CIRCULAR",
                    rngs=nnx.Rngs(0)), "padding 'CIRCULAR'"),
    (lambda: CPConv(3, 4, (3, 3), strides=(1, 2, 1), rank=2,
                    rngs=nnx.Rngs(0)), "strides"),
    (lambda: CPConv(3, 4, (3, 0), rank=2, rngs=nnx.Rngs(0)), "kernel_size"),
    (lambda: CPConv(0, 4, (3, 3), rank=2, rngs=nnx.Rngs(0)), "in_features"),
    (lambda: CPConv(3, 4, (3, 3), rank=2, implementation="fast",
                    rngs=nnx.Rngs(0)), "implementation 'fast'"),
    (lambda: TuckerConv(3, 4, (3, 3), rank=(2, 2, 2), rngs=nnx.Rngs(0)),
     "3 entries"),
    (lambda: TuckerConv(3, 4, (3, 3), rank=(4, 2), rngs=nnx.Rngs(0)),
     r"1\.\.3"),
    (lambda: TuckerDense((28, 28), (300,), rank=(5, 5), rngs=nnx.Rngs(0)),
     "TuckerDense"),
    (lambda: TuckerDense((28, 0), (300,), rank=2, rngs=nnx.Rngs(0)),
     "in_shape"),
    (lambda: TTConv(3, 4, (3, 3), rank=(2, 2), rngs=nnx.Rngs(0)),
     r"TTConv\(3->4\).*2 entries.*3 inner ranks"),
    (lambda: TTConv(3, 4, (3, 3), rank=(4, 2, 2), rngs=nnx.Rngs(0)),
     r"1\.\.3, 1\.\.9, 1\.\.4"),
    (lambda: TTConv(3, 4, (3, 3), rank=1e-3, rngs=nnx.Rngs(0)),
     "at least"),
    (lambda: TTDense((28, 28), (300,), rank=2, rngs=nnx.Rngs(0)),
     "as many modes"),
    (lambda: TTDense((4, 7), (20, 15), rank=(1, 2, 2), rngs=nnx.Rngs(0)),
     "start and end with 1"),
])
def test_layers_reject_bad_arguments_at_construction(make, match):
  with pytest.raises(ValueError, match=match):
    make()


@pytest.mark.slow
def test_layers_reject_inputs_of_the_wrong_shape():
  conv = CPConv(3, 4, (3, 3), rank=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="3 input channels"):
    conv(jnp.ones((1, 8, 8, 5)))
  ttl = TuckerDense((28, 28), (300,), rank=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"\(N, 784\)"):
    ttl(jnp.ones((2, 780)))
  tt = TTDense((28, 28), (20, 15), rank=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"TTDense.*\(N, 784\)"):
    tt(jnp.ones((2, 780)))


def test_count_params_counts_trainable_entries():
  conv = nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0))
  assert cj.count_params(conv) == 3 * 3 * 3 * 4 + 4


@pytest.mark.parametrize("build,given", [
    (lambda x: cj.layers.CPConv.from_conv(x, 2), "Linear"),
    (lambda x: cj.layers.TuckerConv.from_conv(x, (2, 2)), "ConvTranspose"),
    (lambda x: cj.layers.TTConv.from_conv(x, 2), "Linear"),
    (lambda x: cj.layers.TuckerDense.from_linear(
        x, in_shape=(4,), out_shape=(4,), rank=(2, 2)), "Conv"),
    (lambda x: cj.layers.TTDense.from_linear(
        x, in_shape=(2, 2), out_shape=(2, 2), rank=2), "Conv"),
])
def test_from_conv_and_from_linear_name_what_they_take(build, given):
  layers = {"Linear": nnx.Linear(4, 4, rngs=nnx.Rngs(0)),
            "Conv": nnx.Conv(4, 4, (3, 3), rngs=nnx.Rngs(0)),
            "ConvTranspose": nnx.ConvTranspose(4, 4, (3, 3),
                                               rngs=nnx.Rngs(0))}
  takes = ("nnx.Linear or nnx.LinearGeneral" if given == "Conv"
           else "nnx.Conv")
  with pytest.raises(TypeError, match=f"takes an {takes}, got {given}"):
    build(layers[given])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cp", "tucker", "tt", "tucker_dense",
                                  "tt_dense", "low_rank"])
def test_an_empty_batch_gives_an_empty_batch(name):
  rngs = nnx.Rngs(0)
  layer, shape, dense = {
      "cp": (cj.layers.CPConv(4, 8, (3, 3), rank=3, rngs=rngs),
             (0, 8, 8, 4), nnx.Conv(4, 8, (3, 3), rngs=rngs)),
      "tucker": (cj.layers.TuckerConv(4, 8, (3, 3), rank=(2, 2), rngs=rngs),
                 (2, 0, 8, 8, 4), nnx.Conv(4, 8, (3, 3), rngs=rngs)),
      "tt": (cj.layers.TTConv(4, 8, (3, 3), rank=2, rngs=rngs),
             (0, 8, 8, 4), nnx.Conv(4, 8, (3, 3), rngs=rngs)),
      "tucker_dense": (cj.layers.TuckerDense((4, 4), (6,), rank=(2, 2, 3),
                                             rngs=rngs),
                       (0, 16), nnx.Linear(16, 6, rngs=rngs)),
      "tt_dense": (cj.layers.TTDense((2, 2), (2, 3), rank=2, rngs=rngs),
                   (0, 4), nnx.Linear(4, 6, rngs=rngs)),
      "low_rank": (LowRankDense(4, 6, rank=2, rngs=rngs), (0, 4),
                   nnx.Linear(4, 6, rngs=rngs)),
  }[name]
  x = jnp.zeros(shape)
  out = layer(x)
  assert out.shape == dense(x).shape and out.size == 0
  assert jax.jit(layer.__call__)(x).shape == out.shape


@pytest.mark.parametrize("make,x_shape", [
    (lambda dt: CPConv(4, 6, (3, 3), rank=3, param_dtype=dt,
                       rngs=nnx.Rngs(0)), (2, 6, 6, 4)),
    (lambda dt: TuckerConv(4, 6, (3, 3), rank=2, param_dtype=dt,
                           rngs=nnx.Rngs(0)), (2, 6, 6, 4)),
    (lambda dt: TTConv(4, 6, (3, 3), rank=2, param_dtype=dt,
                       rngs=nnx.Rngs(0)), (2, 6, 6, 4)),
    (lambda dt: TuckerDense((4, 4), (3,), rank=2, param_dtype=dt,
                            rngs=nnx.Rngs(0)), (2, 16)),
    (lambda dt: TTDense((4, 4), (2, 3), rank=2, param_dtype=dt,
                        rngs=nnx.Rngs(0)), (2, 16)),
    (lambda dt: LowRankDense(16, 3, rank=2, param_dtype=dt,
                             rngs=nnx.Rngs(0)), (2, 16)),
], ids=["CPConv", "TuckerConv", "TTConv", "TuckerDense", "TTDense",
        "LowRankDense"])
def test_bfloat16_parameters_work_as_in_the_flax_layers(make, x_shape):
  """param_dtype=bfloat16 builds, runs and differentiates,
  with every parameter in that dtype and the output's dtype what
  `nnx.Linear` gives for the same dtypes; the weight it represents is the
  float32 layer's, rounded."""
  layer, full = make(jnp.bfloat16), make(jnp.float32)
  params = nnx.state(layer, nnx.Param)
  assert {p.dtype for p in jax.tree.leaves(params)} == {
      jnp.dtype(jnp.bfloat16)}
  x = jax.random.normal(jax.random.key(1), x_shape)
  linear = nnx.Linear(2, 2, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert layer(x).dtype == linear(jnp.ones((1, 2))).dtype
  grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(layer)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  weight = (layer.kernel_tensor() if hasattr(layer, "kernel_tensor")
            else layer.weight_tensor())
  reference = (full.kernel_tensor() if hasattr(full, "kernel_tensor")
               else full.weight_tensor())
  np.testing.assert_allclose(np.asarray(weight, np.float32), reference,
                             rtol=0.05, atol=0.02 * float(
                                 jnp.max(jnp.abs(reference))))


def test_low_rank_dense_is_the_truncated_svd_of_a_linear_or_linear_general():
  """From an nnx.Linear or an attention-style nnx.LinearGeneral: at full
  rank it computes the layer; at rank R its weight is the closest rank-R
  matrix (the error of the discarded singular values); both paths agree."""
  x = jax.random.normal(jax.random.key(0), (3, 5, 4, 6))
  general = nnx.LinearGeneral((4, 6), (2, 5), axis=(-2, -1),
                              rngs=nnx.Rngs(1))
  general.bias[...] = jax.random.normal(jax.random.key(2), (2, 5))
  full = LowRankDense.from_linear(general, rank=10)
  assert (full.in_shape, full.out_shape) == ((4, 6), (2, 5))
  np.testing.assert_allclose(full(x), general(x), atol=1e-5)
  matrix = np.asarray(general.kernel[...]).reshape(24, 10)
  singular = np.linalg.svd(matrix, compute_uv=False)
  low = LowRankDense.from_linear(general, rank=3)
  error = np.linalg.norm(np.asarray(low.weight_tensor()).reshape(24, 10)
                         - matrix)
  np.testing.assert_allclose(error, np.sqrt(np.sum(singular[3:] ** 2)),
                             rtol=1e-4)
  assert cj.count_params(low) == 3 * (24 + 10) + 10
  paths = [LowRankDense.from_linear(general, rank=3, implementation=i)(x)
           for i in ("factorized", "reconstructed")]
  np.testing.assert_allclose(*paths, rtol=1e-5, atol=1e-5)
  linear = nnx.Linear(6, 4, rngs=nnx.Rngs(3))
  flat = jax.random.normal(jax.random.key(4), (2, 6))
  np.testing.assert_allclose(LowRankDense.from_linear(linear, rank=4)(flat),
                             linear(flat), atol=1e-5)


def test_low_rank_dense_errors_name_the_value():
  with pytest.raises(ValueError, match=r"rank 7 must be an int in 1\.\.6"):
    LowRankDense(6, 8, rank=7, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="contracts axis"):
    LowRankDense.from_linear(
        nnx.LinearGeneral(4, 3, axis=0, rngs=nnx.Rngs(0)), rank=2)
  with pytest.raises(TypeError, match="takes an nnx.Linear or "
                     "nnx.LinearGeneral, got Conv"):
    LowRankDense.from_linear(nnx.Conv(2, 2, (3, 3), rngs=nnx.Rngs(0)),
                             rank=1)
  with pytest.raises(ValueError, match="LowRankDense"):
    LowRankDense(6, 8, rank=2, rngs=nnx.Rngs(0))(jnp.ones((2, 5)))


def test_low_rank_embed_is_the_truncated_svd_of_an_embedding_table():
  embed = nnx.Embed(20, 6, rngs=nnx.Rngs(1))
  ids = jnp.array([[0, 5, 19], [3, 3, 7]])
  query = jax.random.normal(jax.random.key(0), (4, 6))
  full = cj.layers.LowRankEmbed.from_embed(embed, rank=6)
  np.testing.assert_allclose(full(ids), embed(ids), atol=1e-5)
  np.testing.assert_allclose(full.attend(query), embed.attend(query),
                             atol=1e-5)
  low = cj.layers.LowRankEmbed.from_embed(embed, rank=2)
  table = np.asarray(embed.embedding[...])
  singular = np.linalg.svd(table, compute_uv=False)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(low.table()) - table),
                             np.sqrt(np.sum(singular[2:] ** 2)), rtol=1e-4)
  assert cj.count_params(low) == 2 * (20 + 6)
  with pytest.raises(ValueError, match=r"rank 7 must be an int in 1\.\.6"):
    cj.layers.LowRankEmbed(20, 6, rank=7, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="ids must be integers"):
    full(jnp.ones((2,)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_batch_norm_computes_and_differentiates_as_nnx_batch_norm(dtype):
  # every output of a training step: y, the running statistics, and the
  # gradients
  x = 3 * jax.random.normal(jax.random.key(0), (4, 5, 5, 6)) + 1
  cotangent = jax.random.normal(jax.random.key(1), x.shape)
  results = []
  for layer in (nnx.BatchNorm, cj.layers.BatchNorm):
    norm = layer(6, dtype=dtype, rngs=nnx.Rngs(0))
    norm.scale[...] = jnp.linspace(0.5, 2.0, 6)
    norm.bias[...] = jnp.linspace(-1.0, 1.0, 6)
    graphdef, params, stats = nnx.split(norm, nnx.Param, nnx.BatchStat)

    def loss(params, x, stats, graphdef=graphdef):
      norm = nnx.merge(graphdef, params, stats, copy=True)
      y = norm(x)
      return (jnp.sum(jnp.sin(y.astype(jnp.float32)) * cotangent),
              (y, nnx.state(norm, nnx.BatchStat)))

    (_, (y, new_stats)), grads = jax.jit(jax.value_and_grad(
        loss, (0, 1), has_aux=True))(params, x, stats)
    results.append((y, new_stats, grads))
  (y, stats, grads), (our_y, our_stats, our_grads) = results
  assert our_y.dtype == y.dtype == dtype
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
  for ours, theirs in zip(jax.tree.leaves((our_y, our_stats, our_grads)),
                          jax.tree.leaves((y, stats, grads))):
    np.testing.assert_allclose(np.asarray(ours, np.float32),
                               np.asarray(theirs, np.float32),
                               rtol=tolerance, atol=tolerance)


def test_batch_norm_differentiates_through_its_statistics():
  def reference(x, scale, bias):
    mean = jnp.mean(x, (0, 1))
    var = jnp.maximum(0.0, jnp.mean(x * x, (0, 1)) - mean ** 2)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias, mean, var

  def loss(norm, *args):
    y, mean, var = norm(*args)
    return jnp.sum(jnp.sin(y)) + jnp.sum(jnp.cos(mean)) + jnp.sum(var ** 2)

  args = (2 * jax.random.normal(jax.random.key(0), (3, 4, 5)) + 1,
          jnp.linspace(0.5, 2.0, 5), jnp.linspace(-1.0, 1.0, 5))
  ours = jax.grad(lambda *a: loss(cj.functional.batch_norm, *a), (0, 1, 2))
  theirs = jax.grad(lambda *a: loss(reference, *a), (0, 1, 2))
  for got, want in zip(ours(*args), theirs(*args)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # channels of 1000 +- 0.01: in float32 E[x^2] - E[x]^2 comes out below 0
  # or at 0 for some, clipped; no gradient through the clipped variance
  # (half at 0, as jnp.maximum's). The reference sums as batch_norm does.
  def summed_alike(x, scale, bias):
    rows = x.reshape(-1, x.shape[-1])
    weights = jnp.full((rows.shape[0],), 1 / rows.shape[0])
    mean = weights @ rows
    var = jnp.maximum(0.0, weights @ jnp.square(rows) - mean ** 2)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias, mean, var

  x = 1000 + 0.01 * jax.random.normal(jax.random.key(0), (2, 4, 4))
  args = (x, jnp.ones(4), jnp.zeros(4))
  theirs = jax.grad(lambda *a: loss(summed_alike, *a))(*args)
  got = ours(*args)[0]
  assert float(jnp.max(jnp.abs(got - theirs))) <= 0.02 * float(
      jnp.max(jnp.abs(theirs)))


def test_batch_norm_keeps_nnx_batch_norm_state_and_its_other_calls():
  ours = cj.layers.BatchNorm(3, rngs=nnx.Rngs(0))
  theirs = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
  assert (jax.tree.structure(nnx.state(ours))
          == jax.tree.structure(nnx.state(theirs)))
  x = jnp.arange(24.0).reshape(8, 3)
  ours(x), theirs(x)  # a training call moves the running statistics
  for mode in ({"use_running_average": True}, {"mask": x > 4}):
    np.testing.assert_allclose(ours(x, **mode), theirs(x, **mode),
                               rtol=1e-6)
  # bfloat16 parameters, float32 statistics: both promote to float32
  ours, theirs = (layer(3, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
                  for layer in (cj.layers.BatchNorm, nnx.BatchNorm))
  assert ours(x).dtype == theirs(x).dtype == jnp.float32


def test_batch_norm_leaves_nnx_batch_norm_alone_off_the_cpu(monkeypatch):
  # the matrix-vector reductions are a CPU lowering: elsewhere, nnx's call
  called = []
  monkeypatch.setattr(cj.layers.batch_norm, "batch_norm",
                      lambda *args: called.append(args))
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  norm = cj.layers.BatchNorm(3, rngs=nnx.Rngs(0))
  y = norm(jnp.arange(24.0).reshape(8, 3))
  assert not called and abs(float(y.mean())) < 1e-6


def test_batch_norm_names_channels_that_do_not_match():
  with pytest.raises(ValueError, match=r"scale \(4,\).*\(3,\)"):
    cj.functional.batch_norm(jnp.ones((2, 3)), jnp.ones(4), jnp.ones(3))
