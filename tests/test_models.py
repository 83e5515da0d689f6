"""Tests for vdm.models: the DDPM U-Net, the MLP denoiser, their shared layers, and the
training-speed benchmark's output format."""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vdm.models import MLPDenoiser, UNet, fourier_features, timestep_embedding
from vdm.models.layers import gamma_to_embedding_input

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny U-Net that exercises every block type (two levels, attention at 4x4, a channel change
# with a "nin" shortcut) and compiles in a couple of seconds.
TINY = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4)


# Tests compile many small programs: skip XLA's expensive backend optimizations.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _init(model, x, t):
  return jax.jit(model.init, compiler_options=FAST_COMPILE)(
    jax.random.key(0, impl="unsafe_rbg"), x, t)


# ---------------------------------------------------------------------------------------------
# Shared layers.


def test_timestep_embedding_matches_numpy_formula():
  t = np.array([0, 1, 7, 250, 999])
  for dim in (8, 9, 128):
    half = dim // 2
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / (half - 1))
    args = t[:, None].astype(np.float64) * freqs[None, :]
    want = np.concatenate([np.sin(args), np.cos(args)], axis=1)
    if dim % 2:
      want = np.concatenate([want, np.zeros((len(t), 1))], axis=1)
    with jax.enable_x64():
      got = np.asarray(timestep_embedding(jnp.asarray(t), dim, dtype=jnp.float64))
    assert got.shape == (len(t), dim)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    # The default float32 version agrees up to float32 rounding of t * freq (t < 1000).
    got32 = np.asarray(timestep_embedding(jnp.asarray(t), dim))
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, want, rtol=0, atol=2e-4)
  # max_period sets the slowest frequency: the last sine column is sin(t / max_period).
  got = np.asarray(timestep_embedding(jnp.asarray([3.0]), 8, max_period=100.0))
  np.testing.assert_allclose(got[0, 3], np.sin(3.0 / 100.0), rtol=1e-6)


def test_timestep_embedding_bad_input():
  with pytest.raises(ValueError, match="dim"):
    timestep_embedding(jnp.zeros(3), 2)
  with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
    timestep_embedding(jnp.zeros((3, 1)), 8)


def test_fourier_features_match_numpy_formula():
  x = np.random.RandomState(0).uniform(-1, 1, size=(2, 3, 3, 2))
  exps = (6, 7, 8)
  with jax.enable_x64():
    got = np.asarray(fourier_features(jnp.asarray(x), exps))
  sines, cosines = [], []
  for c in range(x.shape[-1]):
    for n in exps:
      sines.append(np.sin(2.0 ** n * np.pi * x[..., c]))
      cosines.append(np.cos(2.0 ** n * np.pi * x[..., c]))
  want = np.stack(sines + cosines, axis=-1)
  assert got.shape == (2, 3, 3, 2 * 2 * len(exps))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_gamma_mapping():
  with jax.enable_x64():
    got = np.asarray(gamma_to_embedding_input(jnp.asarray([-13.3, 5.0, 0.0]), -13.3, 5.0))
  np.testing.assert_allclose(got, [0.0, 1000.0, 1000.0 * 13.3 / 18.3], rtol=1e-6)
  with pytest.raises(ValueError, match="gamma_max"):
    gamma_to_embedding_input(jnp.zeros(2), 1.0, 1.0)


def _conv3x3_same_numpy(x, k, stride):
  """Brute-force TF/Flax-style 'SAME' 3x3 convolution (extra padding at the end), NHWC."""
  b, h, w, c = x.shape
  ho, wo = -(-h // stride), -(-w // stride)
  ph, pw = max((ho - 1) * stride + 3 - h, 0), max((wo - 1) * stride + 3 - w, 0)
  xp = np.zeros((b, h + ph, w + pw, c))
  xp[:, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w] = x
  out = np.zeros((b, ho, wo, k.shape[-1]))
  for y in range(ho):
    for z in range(wo):
      patch = xp[:, y * stride:y * stride + 3, z * stride:z * stride + 3, :]
      out[:, y, z] = np.einsum("bijc,ijco->bo", patch, k)
  return out


@pytest.mark.parametrize("hw,stride", [((8, 8), 1), ((8, 8), 2), ((7, 5), 1), ((7, 5), 2)])
def test_conv3x3_matmul_and_lax_match_brute_force(hw, stride):
  from vdm.models.unet import conv3x3_matmul
  rng = np.random.RandomState(0)
  x = rng.normal(size=(2,) + hw + (3,))
  k = rng.normal(size=(3, 3, 3, 4))
  want = _conv3x3_same_numpy(x, k, stride)
  with jax.enable_x64():
    got = np.asarray(conv3x3_matmul(jnp.asarray(x), jnp.asarray(k), stride))
    got_lax = np.asarray(jax.lax.conv_general_dilated(
      jnp.asarray(x), jnp.asarray(k), (stride, stride), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC")))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
  np.testing.assert_allclose(got_lax, want, rtol=0, atol=1e-9)


def _group_norm_definition(x, scale, bias, groups, eps, xp=np):
  """Group normalization from its definition (Wu and He 2018, Sec. 3.1), two-pass variance.
  xp=np: the float64 NumPy reference; xp=jnp: the same function for JAX's own autodiff (no
  custom gradient)."""
  b, c = x.shape[0], x.shape[-1]
  xg = x.reshape(b, -1, groups, c // groups)
  mean = xg.mean(axis=(1, 3), keepdims=True)
  var = ((xg - mean) ** 2).mean(axis=(1, 3), keepdims=True)
  return ((xg - mean) / xp.sqrt(var + eps)).reshape(x.shape) * scale + bias


@pytest.mark.parametrize("shape,groups", [((3, 5, 4, 8), 4), ((2, 4, 4, 6), 2),
                                          ((2, 7, 9), 3), ((2, 3, 3, 32), 32), ((2, 3, 3, 8), 1)])
def test_group_norm_value_and_gradient(shape, groups):
  """group_norm (two-stage statistics, hand-written gradient) against the definition in NumPy
  and its gradient against JAX's autodiff of the definition, in float64, for 1 to C channels
  per group and 3-D and 4-D inputs; the mean is offset from 0 so the E[x^2] - E[x]^2 form is
  exercised."""
  from vdm.models.unet import group_norm
  rng = np.random.RandomState(1)
  x = rng.normal(size=shape) * 3.0 + 2.0
  scale, bias = rng.normal(size=shape[-1]), rng.normal(size=shape[-1])
  w = rng.normal(size=shape)
  with jax.enable_x64():
    got = np.asarray(group_norm(jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias),
                                groups, 1e-6))
    np.testing.assert_allclose(got, _group_norm_definition(x, scale, bias, groups, 1e-6),
                               rtol=0, atol=1e-9)
    args = tuple(map(jnp.asarray, (x, scale, bias)))
    g_ours = jax.grad(lambda *a: jnp.sum(w * jnp.tanh(group_norm(*a, groups, 1e-6))),
                      (0, 1, 2))(*args)
    g_ref = jax.grad(
      lambda *a: jnp.sum(w * jnp.tanh(_group_norm_definition(*a, groups, 1e-6, xp=jnp))),
      (0, 1, 2))(*args)
  for a, b in zip(g_ours, g_ref):
    assert a.shape == b.shape
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-9)


def test_group_norm_channels_not_divisible_raise():
  from vdm.models.unet import group_norm
  with pytest.raises(ValueError, match="C=6 must be divisible by num_groups=4"):
    group_norm(jnp.ones((1, 2, 2, 6)), jnp.ones(6), jnp.zeros(6), 4, 1e-6)


# ---------------------------------------------------------------------------------------------
# U-Net parameter count: the module's count against a count written from the architecture.


def _unet_param_count_by_formula(c_in, ch, ch_mult, num_res_blocks, attn_resolutions, size,
                out_ch, resamp_with_conv=True, n_fourier=0):
  """Parameter count of the DDPM U-Net, written from Ho et al. (2020), Appendix B."""
  def conv(k, ci, co):  # k x k conv with bias
    return k * k * ci * co + co

  def dense(ci, co):
    return ci * co + co

  def norm(c):  # GroupNorm scale and bias
    return 2 * c

  temb = 4 * ch

  def resblock(ci, co):
    n = norm(ci) + conv(3, ci, co) + dense(temb, co) + norm(co) + conv(3, co, co)
    return n + (dense(ci, co) if ci != co else 0)  # 1x1 "nin" shortcut

  def attn(c):  # norm, q, k, v, proj_out
    return norm(c) + 4 * dense(c, c)

  total = dense(ch, temb) + dense(temb, temb)  # timestep embedding MLP
  first_in = c_in * (1 + 2 * n_fourier)
  total += conv(3, first_in, ch)
  skips = [ch]  # channels of each activation kept for the skip connections
  c, res = ch, size
  for level, mult in enumerate(ch_mult):
    for _ in range(num_res_blocks):
      total += resblock(c, ch * mult)
      c = ch * mult
      if res in attn_resolutions:
        total += attn(c)
      skips.append(c)
    if level != len(ch_mult) - 1:
      total += conv(3, c, c) if resamp_with_conv else 0
      res //= 2
      skips.append(c)
  total += 2 * resblock(c, c) + attn(c)  # middle
  for level in reversed(range(len(ch_mult))):
    for _ in range(num_res_blocks + 1):
      total += resblock(c + skips.pop(), ch * ch_mult[level])
      c = ch * ch_mult[level]
      if res in attn_resolutions:
        total += attn(c)
    if level != 0:
      total += conv(3, c, c) if resamp_with_conv else 0
      res *= 2
  assert not skips
  return total + norm(c) + conv(3, c, out_ch)


def _unet_shape_count(model, shape):
  b = shape[0]
  variables = jax.eval_shape(lambda k: model.init(k, jnp.zeros(shape), jnp.zeros((b,), jnp.int32)),
               jax.random.PRNGKey(0))
  return _n_params(variables["params"])


def test_unet_cifar10_has_35_7m_parameters():
  model = UNet(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
        dropout=0.1)
  n = _unet_shape_count(model, (1, 32, 32, 3))
  assert abs(n - 35.7e6) / 35.7e6 < 0.005, n
  assert n == _unet_param_count_by_formula(3, 128, (1, 2, 2, 2), 2, (16,), 32, 3)
  # Learned variances (2C outputs) only widen conv_out.
  n2 = _unet_shape_count(model.clone(out_channels=6), (1, 32, 32, 3))
  assert n2 == _unet_param_count_by_formula(3, 128, (1, 2, 2, 2), 2, (16,), 32, 6)
  assert n2 - n == 3 * 3 * 128 * 3 + 3


@pytest.mark.parametrize("kw", [
  dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,)),
  dict(ch=64, ch_mult=(1, 2, 4, 8), num_res_blocks=2, attn_resolutions=(16, 8)),
  dict(ch=32, ch_mult=(1, 3), num_res_blocks=3, attn_resolutions=(32,), resamp_with_conv=False),
])
def test_unet_param_count_matches_formula(kw):
  model = UNet(**kw)
  n = _unet_shape_count(model, (1, 32, 32, 3))
  assert n == _unet_param_count_by_formula(3, kw["ch"], kw["ch_mult"], kw["num_res_blocks"],
                      kw["attn_resolutions"], 32, 3,
                      kw.get("resamp_with_conv", True))


# ---------------------------------------------------------------------------------------------
# U-Net behaviour on a tiny configuration. To keep compilation short, parameters are drawn with
# NumPy on the shapes from jax.eval_shape (the residual branches are zero-initialized like DDPM's,
# so random parameters are also what makes dropout visible), and each model is jitted once.


def _random_variables(model, x, t, seed=0):
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t))
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(
    lambda s: jnp.asarray(0.2 * rng.normal(size=s.shape), s.dtype), shapes)


def _jit_apply(model):
  return jax.jit(model.apply, static_argnames="train", compiler_options=FAST_COMPILE)


def _key(seed):
  # RngBitGenerator keys compile much faster than threefry on CPU.
  return jax.random.key(seed, impl="unsafe_rbg")


@pytest.fixture(scope="module")
def tiny_unet():
  model = UNet(**TINY, dropout=0.5)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 3))
  t = jnp.array([3, 700])
  return model, _jit_apply(model), x, t, _random_variables(model, x, t)


def test_unet_output_shapes_and_learned_variance_channels(tiny_unet):
  model, apply, x, t, variables = tiny_unet
  y = apply(variables, x, t)
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(y)))
  m2 = model.clone(out_channels=6)
  v2 = jax.eval_shape(lambda: m2.init(jax.random.PRNGKey(0), x, t))
  assert jax.eval_shape(m2.apply, v2, x, t).shape == (2, 8, 8, 6)
  assert v2["params"]["conv_out"]["kernel"].shape == (3, 3, 16, 6)
  # The output depends on t.
  y_other = apply(variables, x, jnp.array([4, 10]))
  assert np.max(np.abs(np.asarray(y_other) - np.asarray(y))) > 1e-3


def test_unet_conv_impls_agree(tiny_unet):
  model, apply, x, t, variables = tiny_unet
  y_lax = apply(variables, x, t)
  y_mm = _jit_apply(model.clone(conv_impl="matmul"))(variables, x, t)
  np.testing.assert_allclose(np.asarray(y_mm), np.asarray(y_lax), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("purpose", ["train", "eval"])
def test_xla_compiler_options_compile_the_unet_to_the_same_function(tiny_unet, purpose):
  """Each purpose's XLA options are accepted by this jaxlib's compiler and change speed only:
  the forward pass and the parameter gradient match XLA's default compilation."""
  from vdm.xla_options import xla_compiler_options
  model, _, x, t, params = tiny_unet
  f = lambda p: model.apply(p, x, t, train=False)
  g = jax.grad(lambda p: jnp.sum(f(p) ** 2))
  for fn in (f, g):
    want = jax.jit(fn).lower(params).compile()(params)
    got = jax.jit(fn).lower(params).compile(
      compiler_options=xla_compiler_options("cpu", purpose))(params)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  assert xla_compiler_options("tpu", purpose) == {}


def test_xla_compiler_options_bad_purpose():
  from vdm.xla_options import xla_compiler_options
  with pytest.raises(ValueError, match=r"purpose must be one of \['train', 'eval'\], got 'fast'"):
    xla_compiler_options("cpu", "fast")


def test_unet_gamma_conditioning_equals_t_conditioning_on_the_mapped_value(tiny_unet):
  model, _, x, _, variables = tiny_unet
  gamma = jnp.array([-10.0, 2.5])
  mg = model.clone(conditioning="gamma", gamma_min=-13.3, gamma_max=5.0)
  yg = _jit_apply(mg)(variables, x, gamma)
  t_mapped = 1000.0 * (np.array([-10.0, 2.5]) + 13.3) / 18.3  # independent arithmetic
  yt = _jit_apply(model)(variables, x, jnp.asarray(t_mapped, jnp.float32))
  assert yg.shape == x.shape
  np.testing.assert_allclose(np.asarray(yg), np.asarray(yt), rtol=1e-5, atol=1e-5)


def test_unet_fourier_features_grow_input_channels():
  model = UNet(**TINY, fourier_features=(6, 7, 8))
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3), minval=-1, maxval=1)
  t = jnp.array([1, 2])
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t))
  assert variables["params"]["conv_in"]["kernel"].shape == (3, 3, 3 * (1 + 2 * 3), 16)
  assert jax.eval_shape(model.apply, variables, x, t).shape == x.shape
  assert _n_params(variables["params"]) == _unet_param_count_by_formula(
    3, 16, (1, 2), 1, (4,), 8, 3, n_fourier=3)


def test_unet_zero_init_out_gives_exactly_zero(tiny_unet):
  _, _, x, t, _ = tiny_unet
  model = UNet(**TINY, zero_init_out=True)
  variables = _init(model, x, t)
  apply = _jit_apply(model)
  assert np.all(np.asarray(apply(variables, x, t)) == 0.0)
  params = variables["params"]
  assert np.any(np.asarray(params["conv_in"]["kernel"]) != 0.0)
  assert np.all(np.asarray(params["conv_out"]["kernel"]) == 0.0)
  # The zero comes from the output conv alone: with a nonzero one the output is nonzero.
  conv_out = {"kernel": jnp.full_like(params["conv_out"]["kernel"], 0.1),
        "bias": params["conv_out"]["bias"]}
  variables2 = {"params": {**params, "conv_out": conv_out}}
  assert np.max(np.abs(np.asarray(apply(variables2, x, t)))) > 1e-3


def test_unet_dropout_only_in_training(tiny_unet):
  model, apply, x, t, variables = tiny_unet
  k1, k2 = _key(10), _key(11)
  e1 = apply(variables, x, t, train=False, rngs={"dropout": k1})
  e2 = apply(variables, x, t, train=False, rngs={"dropout": k2})
  e3 = apply(variables, x, t)  # no rng needed when not training
  np.testing.assert_array_equal(np.asarray(e1), np.asarray(e2))
  np.testing.assert_array_equal(np.asarray(e1), np.asarray(e3))
  d1 = apply(variables, x, t, train=True, rngs={"dropout": k1})
  d1b = apply(variables, x, t, train=True, rngs={"dropout": k1})
  d2 = apply(variables, x, t, train=True, rngs={"dropout": k2})
  np.testing.assert_array_equal(np.asarray(d1), np.asarray(d1b))
  assert np.max(np.abs(np.asarray(d1) - np.asarray(d2))) > 1e-3
  assert np.max(np.abs(np.asarray(d1) - np.asarray(e1))) > 1e-3


def test_unet_bfloat16_compute_runs_close_to_float32(tiny_unet):
  model, apply, x, t, variables = tiny_unet
  y32 = np.asarray(apply(variables, x, t))
  y16 = np.asarray(_jit_apply(model.clone(dtype=jnp.bfloat16))(variables, x, t))
  assert y16.dtype == np.float32
  rel = np.linalg.norm(y16 - y32) / np.linalg.norm(y32)
  assert 0 < rel < 0.1, rel


def test_unet_bad_inputs_raise():
  model = UNet(**TINY)
  x = jnp.zeros((2, 8, 8, 3))
  t = jnp.zeros((2,), jnp.int32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t))

  def shape_of(m, xx, tt):
    return jax.eval_shape(m.apply, variables, xx, tt)

  with pytest.raises(ValueError, match="divisible by 2"):
    shape_of(model, jnp.zeros((2, 7, 8, 3)), t)
  with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
    shape_of(model, x, jnp.zeros((2, 1)))
  with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
    shape_of(model, x, jnp.zeros((3,)))
  with pytest.raises(ValueError, match=r"NHWC"):
    shape_of(model, jnp.zeros((2, 8, 8)), t)
  with pytest.raises(ValueError, match=r"conditioning must be one of \['t', 'gamma'\], got 'sigma'"):
    shape_of(model.clone(conditioning="sigma"), x, t)
  with pytest.raises(ValueError, match="num_groups"):
    shape_of(model.clone(num_groups=5), x, t)
  with pytest.raises(ValueError, match=r"dtype must be one of \['float32', 'bfloat16'\], got "
                                       r"'float16'"):
    shape_of(model.clone(dtype=jnp.float16), x, t)
  with pytest.raises(ValueError, match="dropout"):
    shape_of(model.clone(dropout=1.0), x, t)
  with pytest.raises(ValueError, match=r"conv_impl must be one of \['lax', 'matmul'\], got 'fft'"):
    shape_of(model.clone(conv_impl="fft"), x, t)


# ---------------------------------------------------------------------------------------------
# MLP denoiser.


def test_mlp_shapes_zero_init_and_conditioning():
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 2))
  t = jnp.arange(5)
  model = MLPDenoiser(hidden=32, num_blocks=2)
  variables = _init(model, x, t)
  apply = _jit_apply(model)
  assert apply(variables, x, t).shape == (5, 2)
  m4 = MLPDenoiser(hidden=32, num_blocks=2, out_dim=4)
  assert jax.eval_shape(lambda: m4.init(jax.random.PRNGKey(0), x, t)
             )["params"]["dense_out"]["kernel"].shape == (32, 4)
  assert jax.eval_shape(lambda: m4.apply(m4.init(jax.random.PRNGKey(0), x, t), x, t)
             ).shape == (5, 4)
  mz = MLPDenoiser(hidden=32, num_blocks=2, zero_init_out=True)
  assert np.all(np.asarray(mz.apply(_init(mz, x, t), x, t)) == 0.0)
  assert np.any(np.asarray(apply(variables, x, t)) != 0.0)
  # gamma conditioning is t conditioning on 1000 * (gamma - gamma_min) / (gamma_max - gamma_min)
  mg = model.clone(conditioning="gamma", gamma_min=-10.0, gamma_max=10.0)
  gamma = np.linspace(-9.0, 9.0, 5)
  yg = mg.apply(variables, x, jnp.asarray(gamma, jnp.float32))
  yt = model.apply(variables, x, jnp.asarray(50.0 * (gamma + 10.0), jnp.float32))
  np.testing.assert_allclose(np.asarray(yg), np.asarray(yt), rtol=1e-5, atol=1e-6)


def test_mlp_dropout_only_in_training():
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
  t = jnp.arange(6)
  model = MLPDenoiser(hidden=32, num_blocks=2, dropout=0.5)
  variables = _init(model, x, t)
  apply = _jit_apply(model)
  k1, k2 = _key(1), _key(2)
  np.testing.assert_array_equal(np.asarray(apply(variables, x, t, rngs={"dropout": k1})),
                 np.asarray(apply(variables, x, t, rngs={"dropout": k2})))
  a = apply(variables, x, t, train=True, rngs={"dropout": k1})
  a2 = apply(variables, x, t, train=True, rngs={"dropout": k1})
  b = apply(variables, x, t, train=True, rngs={"dropout": k2})
  np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))
  assert np.max(np.abs(np.asarray(a) - np.asarray(b))) > 1e-3


def test_mlp_trains_with_adam():
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.normal(size=(64, 2)), jnp.float32)
  t = jnp.asarray(rng.randint(0, 1000, size=64))
  target = jnp.asarray(rng.normal(size=(64, 2)), jnp.float32)
  model = MLPDenoiser(hidden=64, num_blocks=2)
  params = _init(model, x, t)["params"]
  opt = optax.adam(1e-2)

  def loss_fn(p):
    return jnp.mean((model.apply({"params": p}, x, t) - target) ** 2)

  @jax.jit
  def step(p, o):
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, o = opt.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  o = opt.init(params)
  losses = []
  for _ in range(40):
    params, o, loss = step(params, o)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0], losses


def test_mlp_bad_inputs_raise():
  model = MLPDenoiser(hidden=16, num_blocks=1)
  with pytest.raises(ValueError, match=r"x must be \[B, D\]"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((2, 2, 2)), jnp.zeros(2))
  with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((2, 2)), jnp.zeros(3))
  with pytest.raises(ValueError, match=r"conditioning must be one of \['t', 'gamma'\], got 'x'"):
    model.clone(conditioning="x").init(jax.random.PRNGKey(0), jnp.zeros((2, 2)),
                      jnp.zeros(2))
  with pytest.raises(ValueError, match=r"hidden must be an integer >= 4, got 2"):
    model.clone(hidden=2).init(jax.random.PRNGKey(0), jnp.zeros((2, 2)), jnp.zeros(2))


# ---------------------------------------------------------------------------------------------
# The training-speed benchmark prints valid JSON lines (format only; no timing assertions).


def test_bench_train_quick_prints_json_lines(tmp_path):
  cmd = [sys.executable, "-m", "experiments.bench_train", "--quick", "--cases=small",
     "--batches=2", "--reps=1", "--peer=false", "--peak_sizes=512",
     f"--output={tmp_path / 'bt.md'}"]
  env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  train = [r for r in rows if r.get("bench") == "train_step"]
  assert len(train) == 1, out.stdout
  r = train[0]
  keys = ["bench", "case", "batch", "median_s", "images_per_s", "gflop_per_s",
      "peak_gflop_per_s", "frac_of_peak", "jax", "jaxlib", "XLA_FLAGS", "machine",
      "command"]
  assert all(k in r for k in keys), sorted(r)
  assert r["case"] == "small" and r["batch"] == 2
  assert r["median_s"] > 0 and math.isclose(r["images_per_s"], 2 / r["median_s"], rel_tol=1e-6)
  assert r["gflop_per_s"] > 0 and r["peak_gflop_per_s"] > 0
  assert math.isclose(r["frac_of_peak"], r["gflop_per_s"] / r["peak_gflop_per_s"], rel_tol=1e-6)
  assert r["jax"] == jax.__version__
  # The report's head is the run's own command and wall time, recorded in its rows.
  head = (tmp_path / "bt.md").read_text().split("\n\n")[:4]
  assert head[2].startswith("```\npython -m experiments.bench_train --quick --cases=small")
  assert "\nWall time: " in head[3] and f"({r['machine']['cpu']} (" in head[3]
  with open(tmp_path / "bt.jsonl") as f:
    saved = [json.loads(line) for line in f]
  assert [x["bench"] for x in saved].count("train_run") == 1
