"""Datasets -> deterministic, host- and device-sharded numpy batches.

Everything here runs on the host in NumPy, except the three small pure JAX functions `encode`,
`decode` and `dequantize`, which map integer pixels to model space on device.

Sources (`data.dataset`); num_levels K in brackets
--------------------------------------------------
- digits [17]: scikit-learn `load_digits` (shipped inside the scikit-learn wheel), 8x8x1,
  values 0..16; deterministic split: the first 1500 of the 1797 images train, the last 297 test.
- mnist [256]: the four IDX .gz originals in `data.data_dir`, 28x28x1 (32x32x1 with
  `data.pad_to_32`: 2 zero pixels on every side), 60000 / 10000; or tensorflow-datasets.
- cifar10 [256]: the `cifar-10-batches-py` pickles, 32x32x3, 50000 / 10000; or tfds.
- toy2d [None]: `data.toy_name` in swiss_roll | two_moons | eight_gaussians, float32 [N, 2],
  standardized with the training mean and std; num_train / num_test examples.
- gaussian [None]: x ~ N(mu, diag(s^2)), float32 [N, data.dim], mu and s from
  `gaussian_params` (also in Dataset.params); num_train / num_test examples.

Image sources keep integer pixels v in {0, ..., K-1} as uint8 [N, H, W, C] (NHWC); the model
sees x = encode(v, K) = 2v/(K-1) - 1 in [-1, 1] (DESIGN.md). Vector sources are continuous
(num_levels None) float32 [N, D].

Config fields read from the `data` group (all optional except `dataset`):
  dataset      one of `DATASETS`.
  data_dir     directory holding the mnist IDX files, or the cifar10 `cifar-10-batches-py`
               directory (or its parent).
  pad_to_32    mnist only: zero-pad 28x28 to 32x32 (default False).
  use_tfds     mnist/cifar10: load with tensorflow-datasets when it is importable (default
               False); without tfds installed the files in data_dir are used (with a warning).
  tfds_data_dir  tensorflow-datasets data_dir (default None: the tfds default).
  random_flip  images only: random horizontal flips in `get_batch` (default False).
  seed         seed of the synthetic sources toy2d / gaussian (default 0). The order of the
               batches uses the separate `seed` argument of `get_batch` (the run seed).
  toy_name     toy2d: one of `TOY_NAMES`.
  toy_noise    toy2d: noise scale before standardization (default per toy, see `_TOY_NOISE`).
  dim          gaussian: dimension D (required).
  num_train, num_test   toy2d / gaussian: number of examples (defaults 10000 / 2000).

Batches
-------
`get_batch` returns the slice of global batch `step` owned by one process, split over its local
devices. The global batch depends only on (seed, step): the training set is read as an endless
stream of epochs, epoch e a fresh permutation drawn from (seed, e); global batch s holds stream
positions [s*B, (s+1)*B). So any step can be computed directly (resuming needs only the step),
every example appears once per epoch, and a batch larger than the dataset wraps into the next
epoch. Process p of P takes the contiguous positions [p*B/P, (p+1)*B/P) of the global batch.
Random flips are drawn per position of the global batch from (seed, step), so they do not depend
on the number of processes either.
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib
import importlib.util
import math
import os
import pickle
from typing import Any, Iterator, Mapping, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

DATASETS = ("digits", "mnist", "cifar10", "toy2d", "gaussian")
TOY_NAMES = ("swiss_roll", "two_moons", "eight_gaussians")

MNIST_URL = "http://yann.lecun.com/exdb/mnist/"
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_DIRNAME = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"

DIGITS_NUM_TEST = 297  # load_digits has 1797 images: the first 1500 train, the last 297 test.

_DEFAULT_NUM_TRAIN = 10000
_DEFAULT_NUM_TEST = 2000
_TOY_NOISE = {"swiss_roll": 0.5, "two_moons": 0.05, "eight_gaussians": 0.5}

# Fixed stream identifiers so that independent random streams derived from one seed never
# coincide: numpy's SeedSequence([seed, stream, ...]).
_STREAM_PERMUTATION = 1
_STREAM_FLIP = 2
_STREAM_TRAIN = 3
_STREAM_TEST = 4
_STREAM_GAUSSIAN_PARAMS = 5

# IDX type codes (third magic byte) -> big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A loaded dataset (host numpy arrays).

  Attributes:
    name: the `data.dataset` value.
    train: uint8 [N, H, W, C] integer pixels in {0..num_levels-1} for image sources; float32
      [N, D] for vector sources.
    test: same layout as `train`.
    num_levels: K for integer pixels (17 digits, 256 mnist/cifar10); None for continuous data.
    shape: per-example shape, e.g. (28, 28, 1) or (2,).
    is_image: True for [N, H, W, C] integer images.
    train_labels, test_labels: int64 [N] class labels, or None.
    params: source parameters; for `gaussian` {'mu': float64 [D], 's': float64 [D]}.
  """

  name: str
  train: np.ndarray
  test: np.ndarray
  num_levels: Optional[int]
  shape: tuple
  is_image: bool
  train_labels: Optional[np.ndarray] = None
  test_labels: Optional[np.ndarray] = None
  params: Optional[Mapping[str, np.ndarray]] = None

  @property
  def num_dims(self) -> int:
    """Number of data dimensions D per example (the D of bits/dim)."""
    return int(np.prod(self.shape))


# ----------------------------------------------------------------------------------------------
# Config access and validation
# ----------------------------------------------------------------------------------------------


def _field(cfg: Any, name: str, default: Any = None) -> Any:
  """cfg.name if present (ConfigDict or Mapping), else default."""
  if cfg is None:
    return default
  if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
    value = cfg.get(name, default)
  else:
    value = getattr(cfg, name, default)
  return default if value is None else value


def _positive_int(value: Any, field: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f"{field} must be a positive integer, got {value!r}.")
  return int(value)


def _nonnegative_int(value: Any, field: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"{field} must be a non-negative integer, got {value!r}.")
  return int(value)


def _check_num_levels(num_levels: Any) -> int:
  if isinstance(num_levels, bool) or not isinstance(num_levels, (int, np.integer)) \
          or num_levels < 2:
    raise ValueError(f"num_levels must be an integer >= 2 for discrete data, got "
                     f"{num_levels!r}.")
  return int(num_levels)


def _validate(data_config: Any) -> str:
  """Checks the data group before any file is read; returns the dataset name."""
  name = _field(data_config, "dataset")
  if name not in DATASETS:
    raise ValueError(f"data.dataset must be one of {list(DATASETS)}, got {name!r}.")
  is_image = name in ("digits", "mnist", "cifar10")
  if _field(data_config, "pad_to_32", False) and name != "mnist":
    raise ValueError(f"data.pad_to_32 applies only to data.dataset='mnist', got "
                     f"data.dataset={name!r}.")
  if _field(data_config, "random_flip", False) and not is_image:
    raise ValueError(f"data.random_flip applies only to image datasets "
                     f"['digits', 'mnist', 'cifar10'], got data.dataset={name!r}.")
  if name == "toy2d":
    toy = _field(data_config, "toy_name")
    if toy not in TOY_NAMES:
      raise ValueError(f"data.toy_name must be one of {list(TOY_NAMES)}, got {toy!r}.")
    noise = _field(data_config, "toy_noise", _TOY_NOISE[toy])
    if not isinstance(noise, (int, float)) or noise < 0:
      raise ValueError(f"data.toy_noise must be a number >= 0, got {noise!r}.")
  if name == "gaussian":
    _positive_int(_field(data_config, "dim"), "data.dim")
  if name in ("toy2d", "gaussian"):
    _nonnegative_int(_field(data_config, "seed", 0), "data.seed")
    _positive_int(_field(data_config, "num_train", _DEFAULT_NUM_TRAIN), "data.num_train")
    _positive_int(_field(data_config, "num_test", _DEFAULT_NUM_TEST), "data.num_test")
  return name


# ----------------------------------------------------------------------------------------------
# File readers
# ----------------------------------------------------------------------------------------------


def _require_file(path: str, what: str, url: str, field: str = "data.data_dir") -> None:
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{what}: file {os.path.basename(path)!r} not found at {path!r}. Download it from "
        f"{url} and set {field} to the directory that holds it.")


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (plain or .gz) into a numpy array in native byte order.

  IDX format: 2 zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
  0x0D float32, 0x0E float64), the number of dimensions n, then n big-endian uint32 sizes,
  then the data in big-endian row-major order.

  Returns: array of shape given by the header, e.g. uint8 [60000, 28, 28] for MNIST images.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"IDX file {os.path.basename(path)!r} not found at {path!r}.")
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise ValueError(f"{path!r} is not an IDX file: magic bytes {raw[:4]!r}; expected "
                     f"0x00 0x00, a type code in {[hex(c) for c in _IDX_DTYPES]} and ndim.")
  dtype = _IDX_DTYPES[raw[2]]
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"{path!r}: truncated IDX header ({len(raw)} bytes).")
  dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
  expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  if len(raw) - header != expected:
    raise ValueError(f"{path!r}: IDX header says shape {dims} ({expected} data bytes) but "
                     f"the file holds {len(raw) - header} data bytes.")
  data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
  return data.astype(dtype.newbyteorder("="))


def load_mnist_arrays(data_dir: str) -> dict:
  """Reads the four MNIST IDX .gz originals from `data_dir`.

  Returns: dict with train_images uint8 [60000, 28, 28], train_labels uint8 [60000],
    test_images uint8 [10000, 28, 28], test_labels uint8 [10000]; pixel 0 = background,
    255 = ink.
  """
  if not data_dir:
    raise ValueError("data.data_dir must name the directory that holds the MNIST files "
                     f"{list(MNIST_FILES.values())} (from {MNIST_URL}).")
  paths = {k: os.path.join(data_dir, f) for k, f in MNIST_FILES.items()}
  for path in paths.values():  # all present before reading anything
    _require_file(path, "MNIST", MNIST_URL)
  out = {k: read_idx(p) for k, p in paths.items()}
  for split in ("train", "test"):
    images, labels = out[f"{split}_images"], out[f"{split}_labels"]
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
      raise ValueError(f"MNIST {split} images: expected uint8 [N, 28, 28], got "
                       f"{images.dtype} {images.shape}.")
    if labels.shape != images.shape[:1]:
      raise ValueError(f"MNIST {split}: {images.shape[0]} images but labels of shape "
                       f"{labels.shape}.")
  return out


def _cifar10_dir(data_dir: str) -> str:
  if not data_dir:
    raise ValueError(f"data.data_dir must name the {CIFAR10_DIRNAME!r} directory (or its "
                     f"parent), from {CIFAR10_URL}.")
  nested = os.path.join(data_dir, CIFAR10_DIRNAME)
  return nested if os.path.isdir(nested) else data_dir


def _read_cifar_batch(path: str) -> tuple:
  with open(path, "rb") as f:
    batch = pickle.load(f, encoding="bytes")
  get = lambda k: batch[k.encode()] if k.encode() in batch else batch[k]
  data = np.asarray(get("data"), dtype=np.uint8)
  labels = np.asarray(get("labels"), dtype=np.int64)
  if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != data.shape[:1]:
    raise ValueError(f"{path!r}: expected data uint8 [N, 3072] and N labels, got "
                     f"{data.shape} and {labels.shape}.")
  # Each row: 1024 red, 1024 green, 1024 blue values, each a 32x32 image in row-major order.
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def load_cifar10_arrays(data_dir: str) -> dict:
  """Reads the CIFAR-10 python pickle batches.

  Args:
    data_dir: the `cifar-10-batches-py` directory or its parent.
  Returns: dict train_images uint8 [50000, 32, 32, 3] (NHWC), train_labels int64 [50000],
    test_images uint8 [10000, 32, 32, 3], test_labels int64 [10000].
  """
  root = _cifar10_dir(data_dir)
  names = CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,)
  for name in names:
    _require_file(os.path.join(root, name), f"CIFAR-10 ({CIFAR10_DIRNAME})", CIFAR10_URL)
  train = [_read_cifar_batch(os.path.join(root, n)) for n in CIFAR10_TRAIN_FILES]
  test_images, test_labels = _read_cifar_batch(os.path.join(root, CIFAR10_TEST_FILE))
  return {
      "train_images": np.concatenate([b[0] for b in train]),
      "train_labels": np.concatenate([b[1] for b in train]),
      "test_images": test_images,
      "test_labels": test_labels,
  }


def _load_tfds_arrays(name: str, tfds_data_dir: Optional[str]) -> dict:
  """Loads a tensorflow-datasets image dataset in full as numpy: same keys as above."""
  tfds = importlib.import_module("tensorflow_datasets")
  out = {}
  for split in ("train", "test"):
    arrays = tfds.as_numpy(tfds.load(name, split=split, batch_size=-1,
                                     data_dir=tfds_data_dir))
    out[f"{split}_images"] = np.asarray(arrays["image"], dtype=np.uint8)
    out[f"{split}_labels"] = np.asarray(arrays["label"], dtype=np.int64)
  return out


def _use_tfds(data_config: Any) -> bool:
  if not _field(data_config, "use_tfds", False):
    return False
  if importlib.util.find_spec("tensorflow_datasets") is None:
    logging.warning("data.use_tfds=True but tensorflow_datasets is not importable; "
                    "reading the original files from data.data_dir instead.")
    return False
  return True


# ----------------------------------------------------------------------------------------------
# Synthetic sources
# ----------------------------------------------------------------------------------------------


def _rng(*entropy: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([int(e) for e in entropy]))


def _toy2d_raw(toy_name: str, num: int, noise: float, rng: np.random.Generator) -> tuple:
  """Unstandardized toy samples float64 [num, 2] and labels int64 [num] (or None)."""
  if toy_name == "swiss_roll":
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(num))  # angle = radius, 1.5pi .. 4.5pi
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)
    return x + noise * rng.standard_normal((num, 2)), None
  if toy_name == "two_moons":
    labels = rng.integers(0, 2, num)
    angle = np.pi * rng.random(num)
    upper = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    lower = np.stack([1.0 - np.cos(angle), 0.5 - np.sin(angle)], axis=1)
    x = np.where(labels[:, None] == 0, upper, lower)
    return x + noise * rng.standard_normal((num, 2)), labels.astype(np.int64)
  if toy_name == "eight_gaussians":
    labels = rng.integers(0, 8, num)
    angle = 2.0 * np.pi * labels / 8.0
    centers = 4.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return centers + noise * rng.standard_normal((num, 2)), labels.astype(np.int64)
  raise ValueError(f"data.toy_name must be one of {list(TOY_NAMES)}, got {toy_name!r}.")


def _load_toy2d(data_config: Any) -> Dataset:
  toy = _field(data_config, "toy_name")
  seed = _field(data_config, "seed", 0)
  noise = float(_field(data_config, "toy_noise", _TOY_NOISE[toy]))
  n_train = _field(data_config, "num_train", _DEFAULT_NUM_TRAIN)
  n_test = _field(data_config, "num_test", _DEFAULT_NUM_TEST)
  train, train_labels = _toy2d_raw(toy, n_train, noise, _rng(seed, _STREAM_TRAIN))
  test, test_labels = _toy2d_raw(toy, n_test, noise, _rng(seed, _STREAM_TEST))
  # Standardize both splits with the training statistics: train has mean 0, std 1 per axis.
  mean, std = train.mean(axis=0), train.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  return Dataset(name="toy2d", train=((train - mean) / std).astype(np.float32),
                 test=((test - mean) / std).astype(np.float32), num_levels=None, shape=(2,),
                 is_image=False, train_labels=train_labels, test_labels=test_labels)


def gaussian_params(data_config: Any) -> tuple:
  """Parameters of the `gaussian` source, deterministic from data.seed and data.dim.

  mu_d ~ U[-1, 1] and log s_d ~ U[log 0.1, log 1] independently per dimension, so the data
  x ~ N(mu, diag(s^2)) lies at roughly unit scale and its exact log-density is known:
  log p(x) = sum_d log N(x_d; mu_d, s_d^2).

  Returns: (mu float64 [D], s float64 [D]).
  """
  dim = _positive_int(_field(data_config, "dim"), "data.dim")
  seed = _nonnegative_int(_field(data_config, "seed", 0), "data.seed")
  rng = _rng(seed, _STREAM_GAUSSIAN_PARAMS)
  mu = rng.uniform(-1.0, 1.0, dim)
  s = np.exp(rng.uniform(np.log(0.1), 0.0, dim))
  return mu, s


def _load_gaussian(data_config: Any) -> Dataset:
  mu, s = gaussian_params(data_config)
  seed = _field(data_config, "seed", 0)
  n_train = _field(data_config, "num_train", _DEFAULT_NUM_TRAIN)
  n_test = _field(data_config, "num_test", _DEFAULT_NUM_TEST)
  sample = lambda n, stream: (mu + s * _rng(seed, stream).standard_normal((n, mu.size))
                              ).astype(np.float32)
  return Dataset(name="gaussian", train=sample(n_train, _STREAM_TRAIN),
                 test=sample(n_test, _STREAM_TEST), num_levels=None, shape=(mu.size,),
                 is_image=False, params={"mu": mu, "s": s})


# ----------------------------------------------------------------------------------------------
# load_dataset
# ----------------------------------------------------------------------------------------------


def _image_dataset(name: str, arrays: dict, num_levels: int) -> Dataset:
  train, test = arrays["train_images"], arrays["test_images"]
  if train.ndim == 3:  # add the channel axis: NHW -> NHWC
    train, test = train[..., None], test[..., None]
  return Dataset(name=name, train=np.ascontiguousarray(train, dtype=np.uint8),
                 test=np.ascontiguousarray(test, dtype=np.uint8), num_levels=num_levels,
                 shape=tuple(train.shape[1:]), is_image=True,
                 train_labels=np.asarray(arrays["train_labels"], dtype=np.int64),
                 test_labels=np.asarray(arrays["test_labels"], dtype=np.int64))


def load_dataset(data_config: Any) -> Dataset:
  """Loads `data_config.dataset` (see the module docstring for sources and fields).

  Args:
    data_config: the `data` group (ml_collections.ConfigDict or a Mapping).
  Returns: a `Dataset` with host numpy arrays.
  """
  name = _validate(data_config)
  if name == "digits":
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    digits = load_digits()
    images = np.rint(digits.images).astype(np.uint8)  # [1797, 8, 8], values 0..16
    labels = digits.target
    cut = images.shape[0] - DIGITS_NUM_TEST
    return _image_dataset(name, {"train_images": images[:cut], "train_labels": labels[:cut],
                                 "test_images": images[cut:], "test_labels": labels[cut:]},
                          num_levels=17)
  if name == "mnist":
    if _use_tfds(data_config):
      arrays = _load_tfds_arrays("mnist", _field(data_config, "tfds_data_dir"))
    else:
      arrays = load_mnist_arrays(_field(data_config, "data_dir"))
    if _field(data_config, "pad_to_32", False):
      for k in ("train_images", "test_images"):
        pad = [(0, 0), (2, 2), (2, 2)] + [(0, 0)] * (arrays[k].ndim - 3)
        arrays[k] = np.pad(arrays[k], pad)  # zeros = background
    return _image_dataset(name, arrays, num_levels=256)
  if name == "cifar10":
    if _use_tfds(data_config):
      arrays = _load_tfds_arrays("cifar10", _field(data_config, "tfds_data_dir"))
    else:
      arrays = load_cifar10_arrays(_field(data_config, "data_dir"))
    return _image_dataset(name, arrays, num_levels=256)
  if name == "toy2d":
    return _load_toy2d(data_config)
  return _load_gaussian(data_config)


# ----------------------------------------------------------------------------------------------
# On-device encoding (pure jax)
# ----------------------------------------------------------------------------------------------


def encode(v: jax.Array, num_levels: Optional[int], dtype=jnp.float32) -> jax.Array:
  """Integer pixels v in {0..K-1} -> x = 2v/(K-1) - 1 in [-1, 1] (DESIGN.md).

  Computed as (2v - (K-1)) / (K-1) so that both endpoints are exact in float32.
  For continuous data (num_levels None) x = v, cast to `dtype`.

  Args: v: any shape, integer (or float) values. Returns: `dtype` array of the same shape.
  """
  if num_levels is None:
    return jnp.asarray(v, dtype)
  k1 = _check_num_levels(num_levels) - 1
  return (2.0 * jnp.asarray(v, dtype) - k1) / k1


def decode(x: jax.Array, num_levels: Optional[int]) -> jax.Array:
  """x in model space -> nearest integer level, clipped to {0..K-1}; int32, same shape.

  Ties round up: level v owns x in [encode(v) - 1/(K-1), encode(v) + 1/(K-1)), which is
  exactly the support of `dequantize(.., v, K)`. For continuous data (num_levels None)
  returns x unchanged.
  """
  if num_levels is None:
    return jnp.asarray(x)
  k1 = _check_num_levels(num_levels) - 1
  v = jnp.floor((jnp.asarray(x) + 1.0) * (0.5 * k1) + 0.5)
  return jnp.clip(v, 0, k1).astype(jnp.int32)


def dequantize(key: jax.Array, v: jax.Array, num_levels: int, dtype=jnp.float32) -> jax.Array:
  """Uniform dequantization: x = encode(v + u - 1/2) with u ~ U[0, 1) iid per element.

  Scaling: with y = v + u in [0, K), x = (2y - K)/(K - 1), i.e. x = encode(v) + (2u - 1)/(K-1),
  uniform on the bin [encode(v) - 1/(K-1), encode(v) + 1/(K-1)) of half-width 1/(K-1) that
  the discretized decoder assigns to v; dx/dy = 2/(K-1). See `dequantization_offset_bpd`.

  Args: key: PRNG key; v: integer pixels, any shape. Returns: `dtype`, same shape as v.
  """
  k1 = _check_num_levels(num_levels) - 1
  u = jax.random.uniform(key, jnp.shape(v), dtype)
  return encode(v, num_levels, dtype) + (2.0 * u - 1.0) / k1


def dequantization_offset_bpd(num_levels: int) -> float:
  """Bits/dim to add to a continuous bound in x-space to bound the discrete NLL: log2((K-1)/2).

  Derivation (one dimension; dimensions add, so the per-dimension offset is the same). A
  continuous density p_x on x defines discrete probabilities of integer v through the
  dequantization y = v + u, u ~ U[0, 1), and the affine map x = (2y - K)/(K - 1) of
  `dequantize` (dx/dy = a = 2/(K-1)). The density of y is p_y(y) = p_x(x(y)) |a|, so
      P(v) = int_0^1 p_y(v + u) du >= exp E_u[log p_y(v + u)]                (Jensen)
           = exp( E_u[log p_x(x)] + log|a| ),
  hence, in bits,
      -log2 P(v) <= E_u[-log2 p_x(x)] - log2|dx/dy| = E_u[-log2 p_x(x)] + log2((K-1)/2).
  Dividing by D: discrete bpd <= continuous bpd in x-space + log2((K-1)/2), with equality when
  p_x is constant on each bin. For K = 256 the offset is log2(127.5) = 6.9944 bits/dim (the
  often quoted log2(128) = 7 belongs to the scaling x = 2y/K - 1 instead).
  """
  return math.log2((_check_num_levels(num_levels) - 1) / 2.0)


# ----------------------------------------------------------------------------------------------
# Deterministic host batches
# ----------------------------------------------------------------------------------------------


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int,
                      local_device_count: int) -> int:
  global_batch_size = _positive_int(global_batch_size, "global_batch_size")
  process_count = _positive_int(process_count, "process_count")
  local_device_count = _positive_int(local_device_count, "local_device_count")
  process_index = _nonnegative_int(process_index, "process_index")
  if process_index >= process_count:
    raise ValueError(f"process_index must be in [0, process_count={process_count}), got "
                     f"{process_index}.")
  if global_batch_size % (process_count * local_device_count):
    raise ValueError(
        f"global_batch_size={global_batch_size} is not divisible by process_count * "
        f"local_device_count = {process_count} * {local_device_count} = "
        f"{process_count * local_device_count}.")
  return global_batch_size // process_count


def _as_array(data: Any, allow_dataset: bool = True) -> np.ndarray:
  if isinstance(data, Dataset) and not allow_dataset:
    raise ValueError("eval_batches takes an array (e.g. dataset.test), not a Dataset.")
  array = data.train if isinstance(data, Dataset) else data
  if not isinstance(array, np.ndarray) or array.ndim < 1 or array.shape[0] == 0:
    raise ValueError("data must be a Dataset or a non-empty numpy array [N, ...], got "
                     f"{type(array).__name__} of shape {getattr(array, 'shape', None)}.")
  return array


def batch_indices(num_examples: int, *, seed: int, step: int, global_batch_size: int,
                  process_index: int = 0, process_count: int = 1,
                  local_device_count: int = 1) -> np.ndarray:
  """Training-set indices of this process's slice of global batch `step`.

  Stream position q belongs to epoch e = q // N and is example perm_e[q % N], where perm_e is
  the permutation drawn from (seed, e). Global batch s = positions [s*B, (s+1)*B); process p
  of P takes positions s*B + [p*B/P, (p+1)*B/P).

  Returns: int64 [global_batch_size // process_count].
  """
  n = _positive_int(num_examples, "num_examples")
  seed = _nonnegative_int(seed, "seed")
  step = _nonnegative_int(step, "step")
  local = _local_batch_size(global_batch_size, process_index, process_count,
                            local_device_count)
  positions = step * global_batch_size + process_index * local + np.arange(local, dtype=np.int64)
  epochs, offsets = np.divmod(positions, n)
  out = np.empty(local, dtype=np.int64)
  for epoch in np.unique(epochs):
    where = epochs == epoch
    perm = _rng(seed, _STREAM_PERMUTATION, epoch).permutation(n)
    out[where] = perm[offsets[where]]
  return out


def flip_mask(*, seed: int, step: int, global_batch_size: int, process_index: int = 0,
              process_count: int = 1, local_device_count: int = 1) -> np.ndarray:
  """Which examples of this process's slice of batch `step` are flipped: bool [B/P].

  One fair coin per position of the global batch, drawn from (seed, step).
  """
  seed = _nonnegative_int(seed, "seed")
  step = _nonnegative_int(step, "step")
  local = _local_batch_size(global_batch_size, process_index, process_count,
                            local_device_count)
  coins = _rng(seed, _STREAM_FLIP, step).random(global_batch_size) < 0.5
  return coins[process_index * local:(process_index + 1) * local]


def get_batch(data: Any, *, seed: int, step: int, global_batch_size: int,
              process_index: int = 0, process_count: int = 1, local_device_count: int = 1,
              random_flip: bool = False) -> np.ndarray:
  """This process's slice of global training batch `step`, split over its local devices.

  Args:
    data: a Dataset (its `train` split is used) or an array [N, ...].
    seed: run seed; with `step` it alone determines the global batch.
    step: training step >= 0 (any step can be computed directly; no iteration from 0).
    global_batch_size: B over all processes and devices; divisible by
      process_count * local_device_count. B > N is fine (wraps into the next epoch).
    process_index, process_count: this host (jax.process_index(), jax.process_count()).
    local_device_count: jax.local_device_count().
    random_flip: flip images [N, H, W, C] horizontally (W axis) by `flip_mask`.
  Returns: array [local_device_count, B // (process_count * local_device_count), ...] of
    data's dtype.
  """
  array = _as_array(data)
  if random_flip and array.ndim != 4:
    raise ValueError(f"random_flip needs images [N, H, W, C]; got data of shape "
                     f"{array.shape}.")
  idx = batch_indices(array.shape[0], seed=seed, step=step,
                      global_batch_size=global_batch_size, process_index=process_index,
                      process_count=process_count, local_device_count=local_device_count)
  batch = array[idx]
  if random_flip:
    flip = flip_mask(seed=seed, step=step, global_batch_size=global_batch_size,
                     process_index=process_index, process_count=process_count,
                     local_device_count=local_device_count)
    batch[flip] = batch[flip][:, :, ::-1]
  return batch.reshape((local_device_count, -1) + array.shape[1:])


def iterate_batches(data: Any, *, seed: int, start_step: int = 0, global_batch_size: int,
                    process_index: int = 0, process_count: int = 1,
                    local_device_count: int = 1, random_flip: bool = False
                    ) -> Iterator[np.ndarray]:
  """Endless iterator of `get_batch` for steps start_step, start_step + 1, ..."""
  step = _nonnegative_int(start_step, "start_step")
  while True:
    yield get_batch(data, seed=seed, step=step, global_batch_size=global_batch_size,
                    process_index=process_index, process_count=process_count,
                    local_device_count=local_device_count, random_flip=random_flip)
    step += 1


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """Number of batches `eval_batches` yields (the same on every process)."""
  return -(-_positive_int(num_examples, "num_examples")
           // _positive_int(global_batch_size, "global_batch_size"))


def eval_batches(array: np.ndarray, *, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1, local_device_count: int = 1
                 ) -> Iterator[tuple]:
  """Every example of `array` exactly once over all processes, in order, padded and masked.

  Global batch b holds examples [b*B, (b+1)*B); the last one is padded with zeros. Process p
  takes its contiguous slice [p*B/P, (p+1)*B/P), split over local devices. Every process
  yields the same number of batches, `num_eval_batches(N, B)`.

  Yields: (batch [local_device_count, per_device, ...] of array's dtype,
           mask bool [local_device_count, per_device], True for real examples).
  """
  array = _as_array(array, allow_dataset=False)
  local = _local_batch_size(global_batch_size, process_index, process_count,
                            local_device_count)
  n = array.shape[0]
  for b in range(num_eval_batches(n, global_batch_size)):
    start = b * global_batch_size + process_index * local
    idx = start + np.arange(local)
    mask = idx < n
    batch = np.zeros((local,) + array.shape[1:], dtype=array.dtype)
    batch[mask] = array[idx[mask]]
    shape = (local_device_count, local // local_device_count)
    yield batch.reshape(shape + array.shape[1:]), mask.reshape(shape)
