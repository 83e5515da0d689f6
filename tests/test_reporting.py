"""Files a run writes: PNG encoding, sample grids, bound summaries and metric rows."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from vdm import reporting


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trips_through_pillow(channels):
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, size=(7, 5) + ((3,) if channels == 3 else ()), dtype=np.uint8)
  decoded = np.asarray(Image.open(io.BytesIO(reporting._png_bytes(img))))
  np.testing.assert_array_equal(decoded, img)


def test_sample_grid_quantizes_like_the_decoder_and_lays_out_tiles():
  K = 17
  levels = np.arange(4 * 2 * 2).reshape(4, 2, 2, 1) % K
  x = 2.0 * levels / (K - 1) - 1.0 + 0.01   # slightly off-grid, as a sampler's output
  grid = reporting.image_grid(x, K)
  assert grid.shape == (2 * 3 + 1, 2 * 3 + 1)   # 2 x 2 tiles of 2x2 with 1-pixel borders
  np.testing.assert_array_equal(grid[1:3, 1:3], np.round(levels[0, ..., 0] * 255 / (K - 1)))
  np.testing.assert_array_equal(grid[4:6, 4:6], np.round(levels[3, ..., 0] * 255 / (K - 1)))
  assert np.all(grid[0] == 255) and np.all(grid[:, 3] == 255)


def test_bound_summary_splits_the_ddpm_terms():
  T = 8
  vb = np.arange(1.0, T + 1)
  s = reporting.bound_summary({"total_bpd": 0.5 + vb.sum(), "prior_bpd": 0.5, "vb": vb})
  assert s["decoder_bpd"] == 1.0 and s["diffusion_bpd"] == vb[1:].sum()
  assert sum(s[f"vb_q{q}_bpd"] for q in range(4)) == vb.sum()
  assert s["vb_q0_bpd"] == vb[0] + vb[1]
  assert s["prior_bpd"] + s["decoder_bpd"] + s["diffusion_bpd"] == s["total_bpd"]
  text = reporting.decomposition_table(s, 10)
  assert "step 10" in text and "decoder" in text and f"{s['total_bpd']:.4f}" in text


def test_metric_writer_appends_json_rows(tmp_path):
  w = reporting.MetricWriter(str(tmp_path))
  w.write(1, "train", {"loss": np.float32(2.5), "vector": np.ones(3)})
  w.write(2, "eval", {"total_bpd": 3.0})
  w.close()
  rows = reporting.read_metrics(str(tmp_path))
  assert rows == [{"step": 1, "split": "train", "loss": 2.5}, {"step": 2, "split": "eval",
                                                                 "total_bpd": 3.0}]
  for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
    json.loads(line)
  disabled = reporting.MetricWriter(str(tmp_path / "other"), enabled=False)
  disabled.write(1, "train", {"loss": 1.0})
  assert not (tmp_path / "other").exists()
