"""Datasets -> deterministic, host- and device-sharded numpy batches.

Everything here runs on the host in NumPy and reads files; the map from integer pixels to model
space (`encode`, `decode`, `dequantize`) lives on the math side, in `vdm.diffusion.encoding`,
and is re-exported here.

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
- custom [your K or None]: your own arrays, `from_arrays(train, test, num_levels)`, passed to
  `vdm.train.train_and_evaluate(config, workdir, dataset=...)`; `load_dataset` refuses it.

Image sources keep integer pixels v in {0, ..., K-1} as uint8 [N, H, W, C] (NHWC); the model
sees x = encode(v, K) = 2v/(K-1) - 1 in [-1, 1] (DESIGN.md). Vector sources are continuous
(num_levels None) float32 [N, D].

Config fields read from the `data` group (configs/base.py defines each with its default; they
are read directly, so a config missing one fails with a KeyError naming it):
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
  toy_noise    toy2d: noise scale before standardization (None: per toy, see `_TOY_NOISE`).
  dim          gaussian: dimension D.
  num_train, num_test   toy2d / gaussian: number of examples.
  dequantize   read by the objective (uniform dequantization with a continuous decoder).

The MNIST files are checked against data_dir/SHA256SUMS, or without one against the originals'
published SHA-256 (`MNIST_SHA256`), before they are decoded: a damaged or truncated download
fails with an error naming the file.

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
import hashlib
import importlib
import importlib.util
import os
import pickle
import zlib
from typing import Any, Iterator, Mapping, Optional

from absl import logging
import numpy as np

from vdm import checks
# The encoding lives on the math side; re-exported here for code that imports it from data.
from vdm.diffusion.encoding import (decode, dequantization_offset_bpd, dequantize,  # noqa: F401
                                    encode)

IMAGE_DATASETS = ("digits", "mnist", "cifar10")
CUSTOM = "custom"   # arrays passed in (`from_arrays`), not loaded from a source
DATASETS = IMAGE_DATASETS + ("toy2d", "gaussian", CUSTOM)
TOY_NAMES = ("swiss_roll", "two_moons", "eight_gaussians")

MNIST_URL = "http://yann.lecun.com/exdb/mnist/"
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# SHA-256 of the four original files (as distributed at MNIST_URL). load_mnist_arrays checks the
# files against DIR/SHA256SUMS when data_dir has one (sha256sum's format), else against these.
SHA256SUMS = "SHA256SUMS"
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz":
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz":
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz":
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_DIRNAME = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"

DIGITS_NUM_TEST = 297  # load_digits has 1797 images: the first 1500 train, the last 297 test.

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


def _get(data_config: Any, name: str) -> Any:
  """data_config.name, read directly (a ConfigDict or a Mapping): a missing field fails loudly.

  configs/base.py defines every field of the `data` group, with its default; a config built by
  hand must start from `get_base_config().data`.
  """
  try:
    return data_config[name]
  except (KeyError, AttributeError, TypeError):
    raise KeyError(f"data.{name} is missing from the data config; start from "
                   f"configs/base.py's get_base_config().data, which defines every data "
                   f"field with its default") from None


def _toy_noise(data_config: Any) -> float:
  noise = _get(data_config, "toy_noise")   # None: the per-toy default
  if noise is None:
    return _TOY_NOISE[_get(data_config, "toy_name")]
  return checks.number("data.toy_noise", noise, low=0.0)


def _validate(data_config: Any) -> str:
  """Checks the data group before any file is read; returns the dataset name."""
  name = checks.choice("data.dataset", _get(data_config, "dataset"), DATASETS)
  if name == CUSTOM:
    raise ValueError(
        "data.dataset='custom' names arrays passed in, not a source to load: build them with "
        "vdm.data.from_arrays(train, test, num_levels=...) and pass dataset= to "
        "vdm.train.train_and_evaluate (or restore / evaluate / sample)")
  is_image = name in IMAGE_DATASETS
  if checks.boolean("data.pad_to_32", _get(data_config, "pad_to_32")) and name != "mnist":
    raise ValueError(f"data.pad_to_32 applies only to data.dataset='mnist', got "
                     f"data.dataset={name!r}.")
  if checks.boolean("data.random_flip", _get(data_config, "random_flip")) and not is_image:
    raise ValueError(f"data.random_flip applies only to image datasets "
                     f"{list(IMAGE_DATASETS)}, got data.dataset={name!r}.")
  checks.boolean("data.use_tfds", _get(data_config, "use_tfds"))
  if name == "toy2d":
    checks.choice("data.toy_name", _get(data_config, "toy_name"), TOY_NAMES)
    _toy_noise(data_config)
  if name == "gaussian":
    checks.positive_int("data.dim", _get(data_config, "dim"))
  if name in ("toy2d", "gaussian"):
    checks.nonnegative_int("data.seed", _get(data_config, "seed"))
    checks.positive_int("data.num_train", _get(data_config, "num_train"))
    checks.positive_int("data.num_test", _get(data_config, "num_test"))
  return name


# ----------------------------------------------------------------------------------------------
# File readers
# ----------------------------------------------------------------------------------------------


def _require_file(path: str, what: str, url: str, field: str = "data.data_dir") -> None:
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{what}: file {os.path.basename(path)!r} not found at {path!r}. Download it from "
        f"{url} and set {field} to the directory that holds it.")


def _sha256sums(data_dir: str) -> Optional[dict]:
  """{file name: hex digest} from DIR/SHA256SUMS (sha256sum's format), or None if absent."""
  path = os.path.join(data_dir, SHA256SUMS)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    rows = [line.split() for line in f if line.strip()]
  if any(len(r) != 2 for r in rows):
    raise ValueError(f"{path!r}: expected lines '<sha256>  <file name>' (sha256sum's format)")
  return {name.lstrip("*"): digest for digest, name in rows}


def check_sha256(path: str, expected: str, url: str) -> None:
  """Raises ValueError naming the file unless its SHA-256 is `expected` (hex)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  if digest.hexdigest() != expected:
    raise ValueError(f"{path!r} is not the original file: its SHA-256 is {digest.hexdigest()}, "
                     f"expected {expected} (a truncated or damaged download?); download it "
                     f"again from {url}.")


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
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:
    raise ValueError(f"{path!r} is damaged or truncated ({type(e).__name__}: {e}); download "
                     f"it again.") from None
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
  for path in paths.values():  # all present and intact before decoding anything
    _require_file(path, "MNIST", MNIST_URL)
  digests = _sha256sums(data_dir) or MNIST_SHA256
  for path in paths.values():
    name = os.path.basename(path)
    if name not in digests:
      raise ValueError(f"{os.path.join(data_dir, SHA256SUMS)} lists no digest for {name!r}")
    check_sha256(path, digests[name], MNIST_URL)
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
  if not _get(data_config, "use_tfds"):
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
  toy, seed = _get(data_config, "toy_name"), _get(data_config, "seed")
  noise = float(_toy_noise(data_config))
  n_train, n_test = _get(data_config, "num_train"), _get(data_config, "num_test")
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
  dim = checks.positive_int("data.dim", _get(data_config, "dim"))
  seed = checks.nonnegative_int("data.seed", _get(data_config, "seed"))
  rng = _rng(seed, _STREAM_GAUSSIAN_PARAMS)
  mu = rng.uniform(-1.0, 1.0, dim)
  s = np.exp(rng.uniform(np.log(0.1), 0.0, dim))
  return mu, s


def _load_gaussian(data_config: Any) -> Dataset:
  mu, s = gaussian_params(data_config)
  seed = _get(data_config, "seed")
  n_train, n_test = _get(data_config, "num_train"), _get(data_config, "num_test")
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
      arrays = _load_tfds_arrays("mnist", (_get(data_config, "tfds_data_dir") or None))
    else:
      arrays = load_mnist_arrays(_get(data_config, "data_dir"))
    if _get(data_config, "pad_to_32"):
      for k in ("train_images", "test_images"):
        pad = [(0, 0), (2, 2), (2, 2)] + [(0, 0)] * (arrays[k].ndim - 3)
        arrays[k] = np.pad(arrays[k], pad)  # zeros = background
    return _image_dataset(name, arrays, num_levels=256)
  if name == "cifar10":
    if _use_tfds(data_config):
      arrays = _load_tfds_arrays("cifar10", (_get(data_config, "tfds_data_dir") or None))
    else:
      arrays = load_cifar10_arrays(_get(data_config, "data_dir"))
    return _image_dataset(name, arrays, num_levels=256)
  if name == "toy2d":
    return _load_toy2d(data_config)
  return _load_gaussian(data_config)


# ----------------------------------------------------------------------------------------------
# Your own arrays
# ----------------------------------------------------------------------------------------------


def _check_split(name: str, array: Any, num_levels: Optional[int]) -> np.ndarray:
  """One split of `from_arrays`, checked and converted (see there)."""
  a = np.asarray(array)
  if a.ndim < 2 or a.shape[0] < 1 or 0 in a.shape:
    raise ValueError(f"{name} must be an array [N, ...] of N >= 1 examples with no empty axis, "
                     f"got shape {a.shape}")
  if num_levels is None:
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
      raise ValueError(f"{name} must hold numbers, got dtype {a.dtype}")
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
      raise ValueError(f"{name} holds NaN or inf (at flat index "
                       f"{int(np.flatnonzero(~np.isfinite(a))[0])})")
    return np.ascontiguousarray(a)
  if np.issubdtype(a.dtype, np.floating):
    if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
      raise ValueError(f"{name}: with num_levels={num_levels} the values must be integer "
                       f"levels 0..{num_levels - 1}, got non-integer floats (to pass data "
                       f"already scaled to [-1, 1], map it back with round((x + 1) (K - 1) / 2))")
  elif not np.issubdtype(a.dtype, np.integer):
    raise ValueError(f"{name} must hold integer levels, got dtype {a.dtype}")
  lo, hi = a.min(), a.max()
  if lo < 0 or hi > num_levels - 1:
    raise ValueError(f"{name}: levels must lie in 0..{num_levels - 1} (num_levels="
                     f"{num_levels}), got values in [{lo}, {hi}]")
  return np.ascontiguousarray(a.astype(np.uint8 if num_levels <= 256 else np.int32))


def _check_labels(name: str, labels: Any, n: int) -> Optional[np.ndarray]:
  if labels is None:
    return None
  labels = np.asarray(labels)
  if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name} must be integers [{n}], one per example, got {labels.dtype} "
                     f"{labels.shape}")
  return labels.astype(np.int64)


def from_arrays(train: Any, test: Any, num_levels: Optional[int] = None, name: str = CUSTOM,
                train_labels: Any = None, test_labels: Any = None) -> Dataset:
  """A `Dataset` of your own arrays, for `vdm.train.train_and_evaluate(..., dataset=...)`.

  Args:
    train, test: the training and held-out splits, [N, ...] with the same per-example shape.
      Images are [N, H, W, C] (NHWC). With num_levels K: integer levels 0..K-1 (any integer
      dtype, or floats holding whole numbers), stored as uint8 (K <= 256) or int32, and seen
      by the model as x = 2v/(K-1) - 1 in [-1, 1] with the discretized decoder over K levels.
      With num_levels None: continuous data, stored as float32 and fed to the model as is
      (a continuous Gaussian decoder; the bound is then a density, not a discrete NLL).
    num_levels: K >= 2, or None for continuous data.
    name: a label stored with the run (run.json); config.data.dataset must be 'custom'.
    train_labels, test_labels: optional integer class labels [N].
  Returns: a Dataset; `is_image` is True for 4-D integer-level data [N, H, W, C].
  """
  num_levels = checks.optional_num_levels("num_levels", num_levels)
  if not isinstance(name, str) or not name:
    raise ValueError(f"name must be a non-empty string, got {name!r}")
  if name in DATASETS and name != CUSTOM:
    raise ValueError(f"name {name!r} is a built-in source of vdm.data (one of "
                     f"{list(DATASETS[:-1])}); pick another name for your own arrays")
  train = _check_split("train", train, num_levels)
  test = _check_split("test", test, num_levels)
  if train.shape[1:] != test.shape[1:]:
    raise ValueError(f"train and test must have the same per-example shape, got "
                     f"{train.shape[1:]} and {test.shape[1:]}")
  return Dataset(name=name, train=train, test=test, num_levels=num_levels,
                 shape=tuple(int(d) for d in train.shape[1:]),
                 is_image=num_levels is not None and train.ndim == 4,
                 train_labels=_check_labels("train_labels", train_labels, train.shape[0]),
                 test_labels=_check_labels("test_labels", test_labels, test.shape[0]))


def check_dataset_matches_config(dataset: Dataset, data_config: Any) -> None:
  """Raises ValueError unless a passed-in dataset agrees with the `data` group.

  data.dataset must be 'custom' (arrays of your own) or the name of the built-in source the
  dataset was loaded from (a `load_dataset` result passed in); data.random_flip needs images;
  data.pad_to_32 applies only to loading mnist; data.dequantize needs integer levels.
  """
  if not isinstance(dataset, Dataset):
    raise ValueError(f"dataset must be a vdm.data.Dataset (see vdm.data.from_arrays), got "
                     f"{type(dataset).__name__}")
  name = checks.choice("data.dataset", _get(data_config, "dataset"), DATASETS)
  if name not in (CUSTOM, dataset.name):
    raise ValueError(f"data.dataset={name!r} but the dataset passed in is {dataset.name!r}: "
                     f"set data.dataset='{CUSTOM}' for arrays of your own (vdm.data.from_arrays)")
  if _get(data_config, "random_flip") and not dataset.is_image:
    raise ValueError(f"data.random_flip applies only to image data [N, H, W, C] with "
                     f"num_levels; the dataset passed in has shape {dataset.shape} and "
                     f"num_levels {dataset.num_levels}")
  if _get(data_config, "pad_to_32") and name == CUSTOM:
    raise ValueError("data.pad_to_32 applies only to loading mnist; pad your arrays yourself")
  if _get(data_config, "dequantize") and dataset.num_levels is None:
    raise ValueError("data.dequantize=True needs integer data (from_arrays(..., num_levels=K))"
                     "; the dataset passed in is continuous (num_levels None)")


# ----------------------------------------------------------------------------------------------
# Deterministic host batches
# ----------------------------------------------------------------------------------------------


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int,
                      local_device_count: int) -> int:
  global_batch_size = checks.positive_int("global_batch_size", global_batch_size)
  process_count = checks.positive_int("process_count", process_count)
  local_device_count = checks.positive_int("local_device_count", local_device_count)
  process_index = checks.nonnegative_int("process_index", process_index)
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
  n = checks.positive_int("num_examples", num_examples)
  seed = checks.nonnegative_int("seed", seed)
  step = checks.nonnegative_int("step", step)
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
  seed = checks.nonnegative_int("seed", seed)
  step = checks.nonnegative_int("step", step)
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
  step = checks.nonnegative_int("start_step", start_step)
  while True:
    yield get_batch(data, seed=seed, step=step, global_batch_size=global_batch_size,
                    process_index=process_index, process_count=process_count,
                    local_device_count=local_device_count, random_flip=random_flip)
    step += 1


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """Number of batches `eval_batches` yields (the same on every process)."""
  return -(-checks.positive_int("num_examples", num_examples)
           // checks.positive_int("global_batch_size", global_batch_size))


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
