"""Tests of vdm/data.py: sources, encoding, dequantization bound, deterministic sharded batches."""
import gzip
import hashlib
import math
import os
import pickle
import struct
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs import base
from vdm import data

MNIST_DIR = "/work/shared/data/mnist"


def cfg(**kwargs):
  """The base config's data group (every field, with its default) with kwargs set."""
  c = base.get_base_config().data
  c.update(kwargs)
  return c


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_arrays():
  return data.load_mnist_arrays(MNIST_DIR)


@pytest.mark.parametrize("sums,algo", [("MD5SUMS", "md5"), ("SHA256SUMS", "sha256")])
def test_mnist_files_match_checksums(sums, algo):
  with open(os.path.join(MNIST_DIR, sums)) as f:
    lines = [line.split() for line in f if line.strip()]
  assert sorted(name for _, name in lines) == sorted(data.MNIST_FILES.values())
  for digest, name in lines:
    with open(os.path.join(MNIST_DIR, name), "rb") as f:
      assert hashlib.new(algo, f.read()).hexdigest() == digest, name


def test_load_mnist_arrays(mnist_arrays):
  a = mnist_arrays
  assert a["train_images"].shape == (60000, 28, 28) and a["train_images"].dtype == np.uint8
  assert a["test_images"].shape == (10000, 28, 28) and a["test_images"].dtype == np.uint8
  assert a["train_labels"].shape == (60000,) and a["test_labels"].shape == (10000,)
  # Class counts published in /work/shared/data/README.md.
  assert np.bincount(a["train_labels"]).tolist() == [
      5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
  assert np.bincount(a["test_labels"]).tolist() == [
      980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  assert a["train_images"].min() == 0 and a["train_images"].max() == 255
  # Independent parse: skip the 16-byte header by hand and compare the first test image.
  with gzip.open(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz"), "rb") as f:
    raw = f.read(16 + 784)
  assert struct.unpack(">iiii", raw[:16]) == (2051, 10000, 28, 28)
  np.testing.assert_array_equal(
      a["test_images"][0], np.frombuffer(raw[16:], np.uint8).reshape(28, 28))


def test_load_dataset_mnist(mnist_arrays):
  ds = data.load_dataset(cfg(dataset="mnist", data_dir=MNIST_DIR))
  assert ds.train.shape == (60000, 28, 28, 1) and ds.test.shape == (10000, 28, 28, 1)
  assert ds.train.dtype == np.uint8 and ds.num_levels == 256 and ds.is_image
  assert ds.shape == (28, 28, 1) and ds.num_dims == 784
  np.testing.assert_array_equal(ds.train[..., 0], mnist_arrays["train_images"])
  np.testing.assert_array_equal(ds.test_labels, mnist_arrays["test_labels"])


def test_mnist_pad_to_32(mnist_arrays):
  ds = data.load_dataset(cfg(dataset="mnist", data_dir=MNIST_DIR, pad_to_32=True))
  assert ds.train.shape == (60000, 32, 32, 1) and ds.shape == (32, 32, 1)
  np.testing.assert_array_equal(ds.test[:, 2:30, 2:30, 0], mnist_arrays["test_images"])
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False
  assert not ds.train[:, border].any()


def test_digits_split():
  from sklearn.datasets import load_digits
  ref = load_digits()
  ds = data.load_dataset(cfg(dataset="digits"))
  assert ds.train.shape == (1500, 8, 8, 1) and ds.test.shape == (297, 8, 8, 1)
  assert ds.train.dtype == np.uint8 and ds.num_levels == 17 and ds.shape == (8, 8, 1)
  np.testing.assert_array_equal(ds.test[..., 0], ref.images[-297:])
  np.testing.assert_array_equal(ds.train[..., 0], ref.images[:1500])
  np.testing.assert_array_equal(ds.test_labels, ref.target[-297:])
  assert ds.train.max() == 16 and ds.train.min() == 0


def _write_fake_cifar(root, per_batch=3, seed=0):
  """Writes a tiny directory in the exact CIFAR-10 python format; returns NHWC truth."""
  rng = np.random.default_rng(seed)
  d = root / "cifar-10-batches-py"
  d.mkdir()
  truth = {}
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, per_batch).tolist()
    rows = np.concatenate([images[..., c].reshape(per_batch, 1024) for c in range(3)], axis=1)
    batch = {b"batch_label": name.encode(), b"labels": labels, b"data": rows,
             b"filenames": [f"img{i}.png".encode() for i in range(per_batch)]}
    with open(d / name, "wb") as f:
      pickle.dump(batch, f, protocol=2)
    truth[name] = (images, labels)
  return truth


def test_cifar10_fake_directory(tmp_path):
  truth = _write_fake_cifar(tmp_path)
  for data_dir in (tmp_path, tmp_path / "cifar-10-batches-py"):  # parent or the dir itself
    ds = data.load_dataset(cfg(dataset="cifar10", data_dir=str(data_dir)))
    assert ds.train.shape == (15, 32, 32, 3) and ds.test.shape == (3, 32, 32, 3)
    assert ds.train.dtype == np.uint8 and ds.num_levels == 256 and ds.shape == (32, 32, 3)
    np.testing.assert_array_equal(ds.train[3:6], truth["data_batch_2"][0])
    np.testing.assert_array_equal(ds.test, truth["test_batch"][0])
    assert ds.test_labels.tolist() == truth["test_batch"][1]


def test_missing_files_name_file_url_and_field(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    data.load_dataset(cfg(dataset="mnist", data_dir=str(tmp_path)))
  msg = str(e.value)
  assert "train-images-idx3-ubyte.gz" in msg and "yann.lecun.com" in msg
  assert "data.data_dir" in msg
  _write_fake_cifar(tmp_path)
  os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_4")
  with pytest.raises(FileNotFoundError) as e:
    data.load_dataset(cfg(dataset="cifar10", data_dir=str(tmp_path)))
  assert "data_batch_4" in str(e.value) and "cifar-10-python.tar.gz" in str(e.value)
  assert "data.data_dir" in str(e.value)
  with pytest.raises(ValueError, match="data.data_dir"):
    data.load_dataset(cfg(dataset="mnist"))


def test_read_idx_dtypes_and_gzip(tmp_path):
  rng = np.random.default_rng(1)
  for code, dt in [(0x08, ">u1"), (0x0B, ">i2"), (0x0D, ">f4"), (0x0E, ">f8")]:
    ref = (rng.standard_normal((3, 4, 5)) * 100).astype(dt)
    raw = bytes([0, 0, code, 3]) + struct.pack(">III", 3, 4, 5) + ref.tobytes()
    (tmp_path / "a.idx").write_bytes(raw)
    with gzip.open(tmp_path / "a.idx.gz", "wb") as f:
      f.write(raw)
    for name in ("a.idx", "a.idx.gz"):
      got = data.read_idx(str(tmp_path / name))
      assert got.shape == (3, 4, 5) and got.dtype == np.dtype(dt).newbyteorder("=")
      np.testing.assert_array_equal(got, ref)
  (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00")
  with pytest.raises(ValueError, match="not an IDX file"):
    data.read_idx(str(tmp_path / "bad.idx"))
  (tmp_path / "short.idx").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"\x00")
  with pytest.raises(ValueError, match="5"):
    data.read_idx(str(tmp_path / "short.idx"))


def test_tfds_path_used_when_importable(monkeypatch):
  calls = []
  rng = np.random.default_rng(2)
  fake_arrays = {s: {"image": rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
                     "label": rng.integers(0, 10, n)} for s, n in (("train", 5), ("test", 2))}
  fake = types.ModuleType("tensorflow_datasets")
  fake.__spec__ = types.SimpleNamespace(name="tensorflow_datasets")

  def load(name, split, batch_size, data_dir):
    calls.append((name, split, batch_size, data_dir))
    return fake_arrays[split]

  fake.load, fake.as_numpy = load, lambda x: x
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
  monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: object())
  ds = data.load_dataset(cfg(dataset="mnist", use_tfds=True, pad_to_32=True,
                             tfds_data_dir="/nowhere"))
  assert calls == [("mnist", "train", -1, "/nowhere"), ("mnist", "test", -1, "/nowhere")]
  assert ds.train.shape == (5, 32, 32, 1)
  np.testing.assert_array_equal(ds.test[:, 2:30, 2:30], fake_arrays["test"]["image"])


def test_use_tfds_without_tfds_falls_back_to_files(monkeypatch):
  monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
  ds = data.load_dataset(cfg(dataset="mnist", use_tfds=True, data_dir=MNIST_DIR))
  assert ds.train.shape == (60000, 28, 28, 1)


@pytest.mark.parametrize("toy", data.TOY_NAMES)
def test_toy2d(toy):
  c = cfg(dataset="toy2d", toy_name=toy, seed=3, num_train=4000, num_test=500)
  ds = data.load_dataset(c)
  assert ds.train.shape == (4000, 2) and ds.test.shape == (500, 2)
  assert ds.train.dtype == np.float32 and ds.num_levels is None and not ds.is_image
  np.testing.assert_allclose(ds.train.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(ds.train.std(0), 1.0, atol=1e-5)
  assert abs(ds.test.std(0) - 1).max() < 0.15  # same distribution, train statistics
  again = data.load_dataset(c)
  np.testing.assert_array_equal(again.train, ds.train)
  other = data.load_dataset(cfg(dataset="toy2d", toy_name=toy, seed=4, num_train=4000))
  assert not np.array_equal(other.train, ds.train)


def test_toy2d_shapes_differ():
  """The three toys are different distributions: radial profiles of the samples differ."""
  radii = {t: np.sort(np.linalg.norm(data.load_dataset(
      cfg(dataset="toy2d", toy_name=t, num_train=2000)).train, axis=1)) for t in data.TOY_NAMES}
  assert radii["eight_gaussians"].std() < 0.2  # points on a ring
  assert radii["swiss_roll"].std() > 0.3 and radii["two_moons"].std() > 0.3
  labels = data.load_dataset(cfg(dataset="toy2d", toy_name="eight_gaussians")).train_labels
  assert sorted(set(labels.tolist())) == list(range(8))


def test_gaussian_source():
  c = cfg(dataset="gaussian", dim=5, seed=7, num_train=20000, num_test=100)
  ds = data.load_dataset(c)
  mu, s = data.gaussian_params(c)
  assert ds.train.shape == (20000, 5) and ds.train.dtype == np.float32 and ds.shape == (5,)
  np.testing.assert_array_equal(ds.params["mu"], mu)
  np.testing.assert_array_equal(ds.params["s"], s)
  assert np.all((s >= 0.1) & (s <= 1.0)) and np.all(np.abs(mu) <= 1.0)
  # Sample moments vs. the stored parameters (standard errors s/sqrt(n), ~s/sqrt(2n)).
  n = ds.train.shape[0]
  assert np.all(np.abs(ds.train.mean(0) - mu) < 5 * s / np.sqrt(n))
  assert np.all(np.abs(ds.train.std(0) / s - 1) < 5 / np.sqrt(2 * n))
  # Exact log-likelihood against scipy's multivariate normal (independent code path).
  x = ds.test.astype(np.float64)
  ll = stats.norm.logpdf(x, mu, s).sum(1)
  np.testing.assert_allclose(ll, stats.multivariate_normal(mu, np.diag(s**2)).logpdf(x),
                             rtol=1e-10)
  mu2, _ = data.gaussian_params(cfg(dataset="gaussian", dim=5, seed=8))
  assert not np.allclose(mu, mu2)


@pytest.mark.parametrize("bad,match", [
    (dict(dataset="imagenet"), r"data.dataset must be one of \['digits', 'mnist', 'cifar10'"),
    (dict(dataset="toy2d", toy_name="spiral"), r"data.toy_name must be one of \['swiss_roll'"),
    (dict(dataset="toy2d", toy_name=None), "data.toy_name"),
    (dict(dataset="gaussian", dim=None), "data.dim"),
    (dict(dataset="gaussian", dim=2, seed=-1), "data.seed"),
    (dict(dataset="toy2d", toy_noise=-1.0), "data.toy_noise"),
    (dict(dataset="custom"), "from_arrays"),
    (dict(dataset="gaussian", dim=0), "data.dim"),
    (dict(dataset="gaussian", dim=2, num_train=-1), "data.num_train"),
    (dict(dataset="digits", pad_to_32=True), "data.pad_to_32"),
    (dict(dataset="gaussian", dim=2, random_flip=True), "data.random_flip"),
])
def test_bad_config(bad, match):
  with pytest.raises(ValueError, match=match):
    data.load_dataset(cfg(**bad))


# ------------------------------------------------------------------------------------------------
# Encoding and dequantization
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [17, 256])
def test_encode_decode_round_trip(k):
  v = np.arange(k)
  x = data.encode(jnp.asarray(v, jnp.uint8 if k <= 256 else jnp.int32), k)
  assert x.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(x), 2.0 * v / (k - 1) - 1.0, atol=1e-7, rtol=0)
  assert float(x[0]) == -1.0 and float(x[-1]) == 1.0
  back = data.decode(x, k)
  assert back.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(back), v)
  # Anything within 0.49 of a bin half-width decodes to the same level; outside clips.
  h = 1.0 / (k - 1)
  for shift in (-0.49 * h, 0.49 * h):
    np.testing.assert_array_equal(np.asarray(data.decode(x + shift, k)), v)
  assert np.asarray(data.decode(jnp.array([-3.0, 3.0]), k)).tolist() == [0, k - 1]


def test_encode_continuous_is_identity_and_bad_levels():
  x = np.array([0.25, -3.5], np.float32)
  np.testing.assert_array_equal(np.asarray(data.encode(x, None)), x)
  for bad in (1, 0, 2.5, True):
    with pytest.raises(ValueError, match="num_levels"):
      data.encode(jnp.zeros(2), bad)
    with pytest.raises(ValueError, match="num_levels"):
      data.dequantization_offset_bpd(bad)


@pytest.mark.parametrize("k", [17, 256])
def test_dequantize_support_and_decode(k):
  v = jnp.tile(jnp.arange(k), 50)
  x = data.dequantize(jax.random.key(0), v, k)
  assert x.shape == v.shape and x.dtype == jnp.float32
  centre = np.asarray(data.encode(v, k), np.float64)
  dev = (np.asarray(x, np.float64) - centre) * (k - 1)  # in units of half-width: U[-1, 1)
  assert dev.min() >= -1 - 1e-4 and dev.max() < 1 + 1e-4
  assert abs(dev.mean()) < 5 * np.sqrt(1 / 3 / dev.size)  # mean 0, variance 1/3
  assert abs(dev.var() - 1 / 3) < 0.05
  np.testing.assert_array_equal(np.asarray(data.decode(x, k)), np.asarray(v))
  y = data.dequantize(jax.random.key(1), v, k)
  assert not np.array_equal(np.asarray(x), np.asarray(y))


def _gaussian_bound_terms(k, m, sigma):
  """Exact -log2 P(v) and E_u[-log2 p_x(x)] (x uniform on bin v) for p_x = N(m, sigma^2)."""
  v = np.arange(k)
  h = 1.0 / (k - 1)
  lo, hi = 2.0 * v / (k - 1) - 1.0 - h, 2.0 * v / (k - 1) - 1.0 + h
  # log(Phi(b) - Phi(a)) in log space, via the upper tail above the mean, so tails don't underflow.
  a, b = (lo - m) / sigma, (hi - m) / sigma
  upper = a > 0
  big = np.where(upper, stats.norm.logsf(a), stats.norm.logcdf(b))
  small = np.where(upper, stats.norm.logsf(b), stats.norm.logcdf(a))
  nll_discrete = -(big + np.log1p(-np.exp(small - big))) / np.log(2)
  second_moment = ((hi - m) ** 3 - (lo - m) ** 3) / (3.0 * (hi - lo))  # E[(x-m)^2], x ~ U
  nll_continuous = (0.5 * np.log(2 * np.pi * sigma**2) + second_moment / (2 * sigma**2)
                    ) / np.log(2)
  return nll_discrete, nll_continuous


@pytest.mark.parametrize("k", [17, 256])
def test_dequantization_offset_tight_for_uniform_density(k):
  """p_x uniform on the dequantized support [-1-h, 1+h]: P(v) = 1/K exactly, bound is tight."""
  with jax.enable_x64():
    h = 1.0 / (k - 1)
    nll_continuous = -math.log2(1.0 / (2.0 + 2.0 * h))
    bound = nll_continuous + data.dequantization_offset_bpd(k)
    assert abs(bound - math.log2(k)) < 1e-9


@pytest.mark.parametrize("k,m,sigma", [(17, 0.1, 0.3), (256, -0.2, 0.5), (256, 0.0, 0.01)])
def test_dequantization_offset_bounds_gaussian_discrete_nll(k, m, sigma):
  nll_discrete, nll_continuous = _gaussian_bound_terms(k, m, sigma)
  gap = nll_continuous + data.dequantization_offset_bpd(k) - nll_discrete
  assert np.all(gap >= -1e-9)  # Jensen: the bound holds for every level
  # The offset is the right constant: where the density is nearly flat over a bin (half-width
  # h << sigma, within one sigma of the mode) the Jensen gap is O((h/sigma)^2), tiny; an offset
  # off by even 1e-3 bits would fail here.
  h = 1.0 / (k - 1)
  near = np.abs(2.0 * np.arange(k) / (k - 1) - 1.0 - m) < sigma
  if h / sigma < 0.01:
    assert near.sum() > 50 and gap[near].max() < 1e-3
  else:  # coarse bins: the gap is visibly positive
    assert gap[near].max() > 1e-3


def test_dequantization_offset_monte_carlo_with_dequantize():
  """E_u[-log2 p_x(x)] estimated with `dequantize` samples matches the closed form."""
  k, m, sigma = 17, 0.1, 0.3
  _, nll_continuous = _gaussian_bound_terms(k, m, sigma)
  v = jnp.arange(k)
  n = 4000
  x = data.dequantize(jax.random.key(3), jnp.broadcast_to(v, (n, k)), k)
  nll = -np.asarray(stats.norm.logpdf(np.asarray(x, np.float64), m, sigma)) / np.log(2)
  se = nll.std(0) / np.sqrt(n)
  assert np.all(np.abs(nll.mean(0) - nll_continuous) < 5 * se + 1e-6)


# ------------------------------------------------------------------------------------------------
# Training batches
# ------------------------------------------------------------------------------------------------


def _ids(n, extra_shape=()):
  """Array whose every example is filled with its index (so batches reveal indices)."""
  return np.broadcast_to(np.arange(n).reshape((n,) + (1,) * len(extra_shape)),
                         (n,) + extra_shape).copy()


def test_batch_shape_dtype_determinism():
  images = np.random.default_rng(0).integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
  kw = dict(seed=1, global_batch_size=8, local_device_count=2)
  b = data.get_batch(images, step=3, **kw)
  assert b.shape == (2, 4, 4, 4, 3) and b.dtype == np.uint8
  np.testing.assert_array_equal(b, data.get_batch(images, step=3, **kw))
  assert not np.array_equal(b, data.get_batch(images, step=4, **kw))
  assert not np.array_equal(b, data.get_batch(images, step=3, **{**kw, "seed": 2}))
  ds = data.load_dataset(cfg(dataset="digits"))
  np.testing.assert_array_equal(data.get_batch(ds, step=0, seed=0, global_batch_size=4),
                                data.get_batch(ds.train, step=0, seed=0, global_batch_size=4))


@pytest.mark.parametrize("n,batch", [(12, 4), (10, 4), (5, 16)])
def test_every_example_once_per_epoch(n, batch):
  """Concatenated batches are a stream of epochs, each a permutation; B > N wraps around."""
  x = _ids(n, (1,))
  num_epochs = 3
  steps = -(-num_epochs * n // batch)
  stream = np.concatenate([data.get_batch(x, seed=5, step=s, global_batch_size=batch)
                           .reshape(-1) for s in range(steps)])
  epochs = [stream[e * n:(e + 1) * n] for e in range(num_epochs)]
  for e in epochs:
    assert sorted(e.tolist()) == list(range(n))
  assert not np.array_equal(epochs[0], epochs[1])  # fresh permutation per epoch


def test_resume_equals_run_from_zero():
  x = _ids(37, (2,))
  kw = dict(seed=11, global_batch_size=6, random_flip=False)
  seen = [b for _, b in zip(range(20), data.iterate_batches(x, **kw))]
  for s in (0, 7, 19):
    np.testing.assert_array_equal(data.get_batch(x, step=s, **kw), seen[s])
    np.testing.assert_array_equal(next(data.iterate_batches(x, start_step=s, **kw)), seen[s])


def test_host_sharding_concatenates_to_global_batch():
  images = np.random.default_rng(4).integers(0, 256, (30, 5, 6, 1), dtype=np.uint8)
  kw = dict(seed=2, step=9, global_batch_size=8, random_flip=True)
  full = data.get_batch(images, **kw)[0]
  parts = [data.get_batch(images, process_index=p, process_count=2, local_device_count=2, **kw)
           for p in range(2)]
  assert parts[0].shape == (2, 2, 5, 6, 1)
  np.testing.assert_array_equal(np.concatenate([p.reshape(4, 5, 6, 1) for p in parts]), full)
  assert not np.array_equal(parts[0], parts[1])


def test_random_flip_deterministic_and_flips():
  images = np.random.default_rng(5).integers(0, 256, (40, 3, 7, 2), dtype=np.uint8)
  kw = dict(seed=3, step=2, global_batch_size=32)
  plain = data.get_batch(images, **kw)[0]
  flipped = data.get_batch(images, random_flip=True, **kw)[0]
  np.testing.assert_array_equal(flipped, data.get_batch(images, random_flip=True, **kw)[0])
  was_flipped = np.array([np.array_equal(f, p[:, ::-1]) for f, p in zip(flipped, plain)])
  unchanged = np.array([np.array_equal(f, p) for f, p in zip(flipped, plain)])
  assert np.all(was_flipped ^ unchanged)  # each example either flipped along W or untouched
  assert 0 < was_flipped.sum() < 32
  np.testing.assert_array_equal(was_flipped, data.flip_mask(**kw))
  other = data.get_batch(images, random_flip=True, **{**kw, "step": 3})[0]
  plain3 = data.get_batch(images, **{**kw, "step": 3})[0]
  flips3 = np.array([np.array_equal(f, p[:, ::-1]) for f, p in zip(other, plain3)])
  assert not np.array_equal(flips3, was_flipped)
  assert images[0].tolist() == np.random.default_rng(5).integers(
      0, 256, (40, 3, 7, 2), dtype=np.uint8)[0].tolist()  # source not modified in place


@pytest.mark.parametrize("kwargs,match", [
    (dict(global_batch_size=6, process_count=2, local_device_count=2),
     r"global_batch_size=6 .*2 \* 2 = 4"),
    (dict(global_batch_size=4, process_index=2, process_count=2), "process_index"),
    (dict(global_batch_size=0), "global_batch_size"),
    (dict(global_batch_size=4, step=-1), "step"),
    (dict(global_batch_size=4, seed=-3), "seed"),
])
def test_get_batch_bad_inputs(kwargs, match):
  kw = dict(seed=0, step=0)
  kw.update(kwargs)
  with pytest.raises(ValueError, match=match):
    data.get_batch(_ids(10, (2,)), **kw)


def test_get_batch_bad_data():
  with pytest.raises(ValueError, match="random_flip needs images"):
    data.get_batch(_ids(10, (2,)), seed=0, step=0, global_batch_size=2, random_flip=True)
  with pytest.raises(ValueError, match="non-empty"):
    data.get_batch(np.zeros((0, 2)), seed=0, step=0, global_batch_size=2)


# ------------------------------------------------------------------------------------------------
# Evaluation batches
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,batch,procs,devs", [(10, 4, 2, 2), (11, 6, 3, 1), (8, 8, 1, 2),
                                                (3, 8, 2, 2)])
def test_eval_batches_cover_each_example_once(n, batch, procs, devs):
  x = _ids(n, (2, 2, 1)).astype(np.uint8) + 1  # +1 so that zero padding is distinguishable
  seen = []
  counts = []
  for p in range(procs):
    batches = list(data.eval_batches(x, global_batch_size=batch, process_index=p,
                                     process_count=procs, local_device_count=devs))
    counts.append(len(batches))
    for b, mask in batches:
      assert b.shape == (devs, batch // (procs * devs), 2, 2, 1) and b.dtype == np.uint8
      assert mask.shape == b.shape[:2] and mask.dtype == bool
      seen.extend(b[mask][:, 0, 0, 0].tolist())
      assert np.all(b[~mask] == 0)
  assert counts == [math.ceil(n / batch)] * procs
  assert sorted(seen) == list(range(1, n + 1))


def test_eval_batches_bad_divisibility():
  with pytest.raises(ValueError, match="global_batch_size=5"):
    next(data.eval_batches(_ids(10, (1,)), global_batch_size=5, local_device_count=2))
  with pytest.raises(ValueError, match="dataset.test"):
    next(data.eval_batches(data.load_dataset(cfg(dataset="digits")), global_batch_size=4))


# ------------------------------------------------------------------------------------------------
# Fields read directly; damaged MNIST files; your own arrays
# ------------------------------------------------------------------------------------------------


def test_a_missing_field_fails_naming_it():
  c = cfg(dataset="toy2d")
  del c["num_test"]
  with pytest.raises(KeyError, match=r"data.num_test is missing .*configs/base.py"):
    data.load_dataset(c)


def _mnist_copy(tmp_path):
  for name in data.MNIST_FILES.values():
    with open(os.path.join(MNIST_DIR, name), "rb") as src, open(tmp_path / name, "wb") as dst:
      dst.write(src.read())
  return tmp_path


def test_mnist_digests_are_those_of_the_shared_sums():
  with open(os.path.join(MNIST_DIR, "SHA256SUMS")) as f:
    assert dict(reversed(line.split()) for line in f if line.strip()) == data.MNIST_SHA256


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_mnist_file_is_named_before_decoding(tmp_path, damage):
  root = _mnist_copy(tmp_path)
  path = root / "t10k-labels-idx1-ubyte.gz"
  raw = bytearray(path.read_bytes())
  if damage == "truncate":
    raw = raw[:len(raw) // 2]
  else:
    raw[len(raw) // 2] ^= 0x01
  path.write_bytes(bytes(raw))
  with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz.*SHA-256.*download it again"):
    data.load_mnist_arrays(str(root))


def test_a_truncated_gzip_idx_file_is_named(tmp_path):
  path = tmp_path / "x-idx1-ubyte.gz"
  with gzip.open(path, "wb") as f:
    f.write(struct.pack(">BBBBI", 0, 0, 0x08, 1, 1000) + bytes(1000))
  path.write_bytes(path.read_bytes()[:30])
  with pytest.raises(ValueError, match=r"x-idx1-ubyte.gz.*damaged or truncated"):
    data.read_idx(str(path))


def test_from_arrays_levels_and_floats():
  rng = np.random.default_rng(0)
  train = rng.integers(0, 5, (10, 4, 4, 1))
  test = rng.integers(0, 5, (3, 4, 4, 1)).astype(np.float64)     # whole numbers as floats
  ds = data.from_arrays(train, test, num_levels=5, name="mine", train_labels=np.arange(10))
  assert ds.name == "mine" and ds.is_image and ds.num_levels == 5 and ds.shape == (4, 4, 1)
  assert ds.train.dtype == np.uint8 and ds.test.dtype == np.uint8
  np.testing.assert_array_equal(ds.train, train)
  np.testing.assert_array_equal(ds.test, test)
  assert ds.train_labels.tolist() == list(range(10)) and ds.test_labels is None
  wide = data.from_arrays(train * 100, test, num_levels=1000)
  assert wide.train.dtype == np.int32 and wide.name == "custom"
  vec = data.from_arrays(rng.normal(size=(8, 3)), rng.normal(size=(2, 3)))
  assert vec.num_levels is None and not vec.is_image and vec.train.dtype == np.float32
  assert vec.shape == (3,) and vec.num_dims == 3


@pytest.mark.parametrize("kwargs,match", [
    (dict(train=np.zeros((4, 2, 2, 1)), test=np.full((2, 2, 2, 1), 5), num_levels=5),
     r"test: levels must lie in 0..4 \(num_levels=5\), got values in \[5, 5\]"),
    (dict(train=np.full((4, 3), 0.5), test=np.zeros((2, 3)), num_levels=4),
     r"train: with num_levels=4 the values must be integer levels 0..3"),
    (dict(train=np.zeros((4, 3)), test=np.zeros((2, 4)), num_levels=None),
     r"same per-example shape, got \(3,\) and \(4,\)"),
    (dict(train=np.zeros((0, 3)), test=np.zeros((2, 3)), num_levels=None), r"train must be"),
    (dict(train=np.zeros(4), test=np.zeros(2), num_levels=None), r"train must be an array"),
    (dict(train=np.array([[np.nan]]), test=np.zeros((1, 1)), num_levels=None), r"NaN or inf"),
    (dict(train=np.zeros((4, 3)), test=np.zeros((2, 3)), num_levels=1), r"num_levels must be"),
    (dict(train=np.zeros((4, 3)), test=np.zeros((2, 3)), name="mnist"), r"built-in source"),
    (dict(train=np.zeros((4, 3)), test=np.zeros((2, 3)), train_labels=np.zeros(3, int)),
     r"train_labels must be integers \[4\]"),
])
def test_from_arrays_refuses_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    data.from_arrays(**kwargs)


def test_check_dataset_matches_config():
  ds = data.from_arrays(np.zeros((4, 2, 2, 1), int), np.zeros((2, 2, 2, 1), int), 3, name="mine")
  data.check_dataset_matches_config(ds, cfg(dataset="custom", random_flip=True))
  digits = data.load_dataset(cfg(dataset="digits"))
  data.check_dataset_matches_config(digits, cfg(dataset="digits"))   # a loaded source, passed in
  with pytest.raises(ValueError, match=r"data.dataset='digits' but the dataset passed in is "
                                       r"'mine': set data.dataset='custom'"):
    data.check_dataset_matches_config(ds, cfg(dataset="digits"))
  with pytest.raises(ValueError, match=r"data.dataset must be one of"):
    data.check_dataset_matches_config(ds, cfg(dataset="mine2"))
  vec = data.from_arrays(np.zeros((4, 2)), np.zeros((2, 2)))
  with pytest.raises(ValueError, match="data.random_flip"):
    data.check_dataset_matches_config(vec, cfg(dataset="custom", random_flip=True))
  with pytest.raises(ValueError, match="data.dequantize"):
    data.check_dataset_matches_config(vec, cfg(dataset="custom", dequantize=True))
  with pytest.raises(ValueError, match="vdm.data.Dataset"):
    data.check_dataset_matches_config(np.zeros((4, 2)), cfg(dataset="custom"))
