r"""Sample quality as a Frechet distance between Gaussians fitted to features of images.

The Frechet (2-Wasserstein) distance between N(mu1, S1) and N(mu2, S2) is
    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})
(Dowson & Landau 1982; the FID of Heusel et al. 2017 is d^2 on Inception-v3 pool features).
`frechet_distance` returns d^2, like FID.

Two feature spaces:
- `FeatureClassifier`: a small CNN trained here, on the same data set with its labels; the
  distance in its penultimate layer is reported as "FD_<dataset>-classifier", never as FID.
- `inception_fid`: the standard FID features (pytorch-fid's port of the TTUR Inception-v3),
  used only when torch, pytorch_fid and the Inception weights file are already on disk (this
  module never downloads anything).
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from typing import Optional

import numpy as np

# pytorch-fid's weights file (the TTUR Inception graph converted to PyTorch).
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"


# ---------------------------------------------------------------------------------------------
# The distance.

def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix by eigendecomposition (negatives -> 0)."""
  w, v = np.linalg.eigh((a + a.T) / 2.0)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

  Args:
    mu1, mu2: [F] means; sigma1, sigma2: [F, F] symmetric PSD covariances.
  Returns:
    d^2 = ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((s1 sigma2 s1)^{1/2}), s1 =
    sigma1^{1/2} (float64; the trace term uses the eigenvalues of the symmetric PSD matrix
    s1 sigma2 s1, which has the same spectrum as sigma1 sigma2, so no complex square roots).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.ndim != 1 or mu1.shape != mu2.shape:
    raise ValueError(f"mu1 and mu2 must be vectors [F] of one size, got {mu1.shape}, {mu2.shape}")
  f = mu1.shape[0]
  if s1.shape != (f, f) or s2.shape != (f, f):
    raise ValueError(f"sigma1 and sigma2 must be [{f}, {f}], got {s1.shape}, {s2.shape}")
  root1 = _sqrtm_psd(s1)
  m = root1 @ s2 @ root1
  eig = np.linalg.eigvalsh((m + m.T) / 2.0)
  cross = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * cross)


def gaussian_stats(features) -> tuple:
  """Mean [F] and unbiased covariance [F, F] (as np.cov, rowvar=False) of features [N, F]."""
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"features must be [N >= 2, F], got shape {x.shape}")
  return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance_features(f1, f2) -> float:
  """Squared Frechet distance between Gaussians fitted to features f1 [N1, F] and f2 [N2, F]."""
  return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


def bootstrap_std(f1, f2, num: int, seed: int = 0) -> float:
  """Standard deviation of the distance over `num` bootstrap resamples of both feature sets.

  Both sets are resampled with replacement (sizes kept); a rough standard error of the
  distance, which at a few hundred samples is dominated by the estimation noise of the
  covariances. Returns nan when num < 2.
  """
  if num < 2:
    return float("nan")
  f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
  rng = np.random.default_rng(seed)
  vals = [frechet_distance_features(f1[rng.integers(0, len(f1), len(f1))],
                                    f2[rng.integers(0, len(f2), len(f2))]) for _ in range(num)]
  return float(np.std(vals, ddof=1))


# ---------------------------------------------------------------------------------------------
# The feature classifier (Flax).

def _classifier_module(num_classes: int, channels: int, features: int):
  import flax.linen as nn
  import jax.numpy as jnp

  class FeatureClassifier(nn.Module):
    """conv3x3(c) - relu - conv3x3(2c, stride 2) - relu - conv3x3(2c, stride 2) - relu -
    mean over space - dense(features) - relu [= the feature layer] - dense(num_classes).

    Input [N, H, W, C] on the model scale [-1, 1]; returns (logits [N, classes],
    features [N, features])."""

    @nn.compact
    def __call__(self, x):
      h = nn.relu(nn.Conv(channels, (3, 3))(x))
      h = nn.relu(nn.Conv(2 * channels, (3, 3), strides=(2, 2))(h))
      h = nn.relu(nn.Conv(2 * channels, (3, 3), strides=(2, 2))(h))
      h = jnp.mean(h, axis=(1, 2))
      feats = nn.relu(nn.Dense(features)(h))
      return nn.Dense(num_classes)(feats), feats

  return FeatureClassifier()


def encode_levels(v, num_levels: int) -> np.ndarray:
  """Integer pixels v in {0..K-1} -> x = 2v/(K-1) - 1 (DESIGN.md), float32."""
  return (2.0 * np.asarray(v, np.float32) / (num_levels - 1) - 1.0).astype(np.float32)


def quantize_samples(x, num_levels: int) -> np.ndarray:
  """Model-scale samples [-1, 1] -> uint8 levels {0..K-1} (round to the nearest level, clip)."""
  v = np.round((np.asarray(x, np.float64) + 1.0) * (num_levels - 1) / 2.0)
  return np.clip(np.nan_to_num(v, nan=0.0), 0, num_levels - 1).astype(np.uint8)


class TrainedClassifier:
  """A trained `FeatureClassifier`: `.features(v)` maps uint8 images to penultimate features."""

  def __init__(self, module, params, num_levels: int, test_accuracy: float, batch: int = 500):
    import jax
    self.module, self.params, self.num_levels = module, params, num_levels
    self.test_accuracy = test_accuracy
    self._apply = jax.jit(lambda p, x: module.apply({"params": p}, x))
    self._batch = batch

  def logits_and_features(self, v) -> tuple:
    x = encode_levels(v, self.num_levels)
    outs = [self._apply(self.params, x[i:i + self._batch]) for i in range(0, len(x), self._batch)]
    return (np.concatenate([np.asarray(o[0]) for o in outs]),
            np.concatenate([np.asarray(o[1], np.float64) for o in outs]))

  def features(self, v) -> np.ndarray:
    """uint8 [N, H, W, C] levels -> float64 [N, features]."""
    return self.logits_and_features(v)[1]


def train_classifier(train_v, train_labels, test_v, test_labels, num_levels: int, cfg
                     ) -> TrainedClassifier:
  """Train the feature classifier with Adam on cross-entropy (full epochs, shuffled per epoch).

  Args:
    train_v, test_v: uint8 [N, H, W, C] levels; train_labels, test_labels: int [N].
    cfg: features, channels, epochs, batch_size, learning_rate, seed (paper.classifier).
  Returns:
    the trained classifier, with its accuracy on (test_v, test_labels).
  """
  import jax
  import jax.numpy as jnp
  import optax
  if train_labels is None or test_labels is None:
    raise ValueError("the feature classifier needs class labels: the data set has none")
  for name in ("features", "channels", "epochs", "batch_size"):
    if int(cfg[name]) < 1:
      raise ValueError(f"config field paper.classifier.{name} must be >= 1, got {cfg[name]}")
  labels = np.asarray(train_labels, np.int32)
  num_classes = int(max(labels.max(), np.max(test_labels))) + 1
  module = _classifier_module(num_classes, int(cfg.channels), int(cfg.features))
  x = encode_levels(train_v, num_levels)
  key = jax.random.PRNGKey(int(cfg.seed))
  params = module.init(key, x[:1])["params"]
  opt = optax.adam(float(cfg.learning_rate))
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, xb, yb):
    def loss_fn(p):
      logits, _ = module.apply({"params": p}, xb)
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(int(cfg.seed))
  bs = min(int(cfg.batch_size), len(x))
  for _ in range(int(cfg.epochs)):
    order = rng.permutation(len(x))
    for i in range(0, len(x) - bs + 1, bs):   # whole batches only: one compilation
      idx = order[i:i + bs]
      params, opt_state, _ = step(params, opt_state, x[idx], labels[idx])
  clf = TrainedClassifier(module, params, num_levels, float("nan"))
  logits, _ = clf.logits_and_features(test_v)
  clf.test_accuracy = float(np.mean(np.argmax(logits, axis=1) == np.asarray(test_labels)))
  return clf


# ---------------------------------------------------------------------------------------------
# The standard FID (full-scale path): only with local weights.

def fid_unavailable_reason(weights_path: Optional[str]) -> Optional[str]:
  """None if `inception_fid` can run here with these weights; else why not (one sentence)."""
  missing = [m for m in ("torch", "pytorch_fid") if importlib.util.find_spec(m) is None]
  if not weights_path:
    return ("FID needs the Inception-v3 FID weights, which cannot be downloaded here; pass "
            f"--fid_inception_weights=PATH/{FID_WEIGHTS_NAME} (with torch and pytorch-fid "
            "installed) to compute it")
  if not os.path.isfile(weights_path):
    return f"--fid_inception_weights={weights_path} is not a file"
  if missing:
    return (f"FID needs the packages {', '.join(missing)} (pip install torch pytorch-fid); "
            "not installed here")
  return None


def inception_fid(real_v, fake_v, num_levels: int, weights_path: str,
                  batch_size: int = 100) -> float:
  """FID (Heusel et al. 2017) between uint8 image sets [N, H, W, C], with pytorch-fid's TTUR
  Inception-v3 loaded from the local file `weights_path` (never downloaded).

  Images are stretched from 0..K-1 to [0, 1], grey images repeated to 3 channels; pytorch-fid
  resizes to 299x299 and takes the 2048-d pool features.
  """
  reason = fid_unavailable_reason(weights_path)
  if reason:
    raise RuntimeError(reason)
  import torch
  from pytorch_fid import inception as fid_inception

  with tempfile.TemporaryDirectory() as hub:
    # pytorch-fid loads its weights with torch.hub.load_state_dict_from_url, which uses a file
    # already in <hub dir>/checkpoints/ instead of downloading it.
    os.makedirs(os.path.join(hub, "checkpoints"))
    os.symlink(os.path.abspath(weights_path), os.path.join(hub, "checkpoints", FID_WEIGHTS_NAME))
    old = torch.hub.get_dir()
    torch.hub.set_dir(hub)
    try:
      block = fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]
      model = fid_inception.InceptionV3([block], use_fid_inception=True).eval()
    finally:
      torch.hub.set_dir(old)

  def feats(v):
    out = []
    for i in range(0, len(v), batch_size):
      x = np.asarray(v[i:i + batch_size], np.float32) / (num_levels - 1)
      if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
      with torch.no_grad():
        f = model(torch.from_numpy(np.transpose(x, (0, 3, 1, 2))))[0]
      out.append(f.squeeze(-1).squeeze(-1).cpu().numpy().astype(np.float64))
    return np.concatenate(out)

  return frechet_distance_features(feats(real_v), feats(fake_v))
