"""vdm.coding.ans: the Message and the push/pop primitives over constriction."""
import numpy as np
import pytest

from vdm.coding import ans


def test_seeded_message_is_deterministic_and_round_trips_words():
  a, b = ans.Message.seeded(16, 3), ans.Message.seeded(16, 3)
  assert np.array_equal(a.words(), b.words())
  assert a.words().dtype == np.uint32 and a.num_words() == 16
  assert a.num_bits() > 15 * 32
  assert np.array_equal(ans.Message.from_words(a.words()).words(), a.words())
  assert not np.array_equal(a.words(), ans.Message.seeded(16, 4).words())
  with pytest.raises(ValueError, match="num_words"):
    ans.Message.seeded(1, 0)
  with pytest.raises(ans.MessageError, match="zero word"):
    ans.Message.from_words(np.array([5, 0], np.uint32))


def _roundtrip(push, pop, symbols):
  msg = ans.Message.seeded(8, 0)
  seed = msg.words()
  before = msg.num_bits()
  push(msg, symbols)
  grown = msg.num_bits() - before
  out = pop(msg)
  assert np.array_equal(out, symbols)
  assert np.array_equal(msg.words(), seed)
  return grown


def test_push_pop_round_trips_and_costs_the_ideal_codelength():
  rng = np.random.default_rng(0)
  n, s = 500, 5
  probs = rng.random((n, s)) + 0.05
  sym = np.array([rng.choice(s, p=p / p.sum()) for p in probs])
  bits = _roundtrip(lambda m, x: ans.push_categorical(m, x, probs=probs),
                    lambda m: ans.pop_categorical(m, probs=probs), sym)
  ideal = -ans.categorical_log2prob(sym, ans.canonical_log2_probs(probs=probs)).sum()
  assert abs(bits - ideal) < 1 + 1e-3 * ideal

  logits = rng.normal(size=n) * 3
  b = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(int)
  bits = _roundtrip(lambda m, x: ans.push_bernoulli(m, x, logits=logits),
                    lambda m: ans.pop_bernoulli(m, logits=logits), b)
  ideal = -ans.bernoulli_log2prob(b, ans.canonical_logits(logits)).sum()
  assert abs(bits - ideal) < 1 + 1e-3 * ideal

  mean, std = rng.normal(size=n) * 50, rng.uniform(1, 30, size=n)
  k = np.clip(np.round(mean + std * rng.normal(size=n)), -300, 300).astype(int)
  grid = (-300, 300)
  bits = _roundtrip(lambda m, x: ans.push_gaussian(m, x, mean, std, grid),
                    lambda m: ans.pop_gaussian(m, mean, std, grid), k)
  ideal = -ans.gaussian_log2prob(k, ans.canonical_mean(mean), ans.canonical_std(std), grid).sum()
  assert abs(bits - ideal) < 1 + 2e-3 * ideal

  # The escaped two-level Gaussian: any symbol of the grid, and a far outlier (escaped).
  big = (-2**15, 2**15)
  mean2, std2 = rng.normal(size=n) * 2000, rng.uniform(30, 4000, size=n)
  k2 = np.clip(np.round(mean2 + std2 * rng.normal(size=n)), *big).astype(int)
  push = lambda m, x: ans.push_gaussian_escaped(m, x, mean2, std2, big)
  pop = lambda m: ans.pop_gaussian_escaped(m, mean2, std2, big)
  bits = _roundtrip(push, pop, k2)
  ideal = -ans.escaped_gaussian_log2prob(k2, mean2, std2, big).sum()
  assert abs(bits - ideal) < 2 + 2e-3 * ideal
  # An outlier far outside its window is escaped (24 bits for the flag) and still round trips;
  # constriction's 2**-24 floor makes it far cheaper than its exact probability.
  k2[0] = 2**15 if mean2[0] < 0 else -2**15
  assert _roundtrip(push, pop, k2) > bits + 24

  _roundtrip(lambda m, x: ans.push_uint32(m, x), lambda m: ans.pop_uint32(m, 3),
             np.array([0, 2**32 - 1, 12345]))


def test_windowed_pops_are_samples_and_probabilities_sum_to_one():
  grid = (-1000, 1000)
  k = np.arange(-1000, 1001)
  for mean, std in [(0.0, 40.0), (990.0, 100.0), (-3.3, 2.0)]:
    p = np.exp2(ans.windowed_gaussian_log2prob(k, np.full(k.shape, mean), np.full(k.shape, std),
                                               grid))
    assert abs(p.sum() - 1) < 1e-9
  # Popping from random bits draws from the model: mean and std of 4000 draws.
  msg = ans.Message.seeded(4000, 1)
  draws = ans.pop_gaussian_windowed(msg, np.full(4000, 12.0), np.full(4000, 300.0), (-2**15, 2**15))
  assert abs(draws.mean() - 12.0) < 4 * 300 / np.sqrt(4000)
  assert abs(draws.std() / 300.0 - 1) < 0.05


def test_canonical_parameters_are_idempotent_and_absorb_float_noise():
  rng = np.random.default_rng(1)
  m = rng.normal(size=100) * 1000
  s = rng.uniform(0.5, 1000, size=100)
  lg = rng.normal(size=100) * 5
  lp = rng.normal(size=(10, 7))
  assert np.array_equal(ans.canonical_mean(ans.canonical_mean(m)), ans.canonical_mean(m))
  assert np.array_equal(ans.canonical_std(ans.canonical_std(s)), ans.canonical_std(s))
  assert np.array_equal(ans.canonical_logits(ans.canonical_logits(lg)), ans.canonical_logits(lg))
  c = ans.canonical_log2_probs(log_probs=lp)
  assert np.array_equal(ans.canonical_log2_probs(log2_probs=c), c)
  # float32 rounding of the inputs changes almost no canonical value.
  assert np.mean(ans.canonical_mean(m.astype(np.float32)) != ans.canonical_mean(m)) < 0.05
  assert np.mean(ans.canonical_std(s.astype(np.float32)) != ans.canonical_std(s)) < 0.05


def test_bad_arguments_raise_value_errors():
  msg = ans.Message.seeded(4, 0)
  with pytest.raises(ValueError, match="symbol_range"):
    ans.push_gaussian(msg, [0], [0.0], [1.0], (3, 3))
  with pytest.raises(ValueError, match="symbols must lie"):
    ans.push_gaussian(msg, [10], [0.0], [1.0], (-5, 5))
  with pytest.raises(ValueError, match="std"):
    ans.push_gaussian(msg, [0], [0.0], [-1.0], (-5, 5))
  with pytest.raises(ValueError, match="bits"):
    ans.push_bernoulli(msg, [2], probs=[0.5])
  with pytest.raises(ValueError, match="message"):
    ans.push_bernoulli(None, [1], probs=[0.5])
  with pytest.raises(ValueError, match="symbols must lie"):
    ans.push_categorical(msg, [3], probs=[[0.5, 0.5]])
  assert np.array_equal(msg.words(), ans.Message.seeded(4, 0).words())  # nothing was coded


def test_header_detects_wrong_magic_and_settings():
  msg = ans.Message.seeded(4, 0)
  ans.push_header(msg, "cfg", 7, 3, ans.crc32(np.arange(5)))
  words = msg.words()
  crc = ans.check_header(ans.Message.from_words(words), "cfg", 7, 3)
  assert crc == ans.crc32(np.arange(5))
  with pytest.raises(ans.MessageError, match="configuration"):
    ans.check_header(ans.Message.from_words(words), "other", 7, 3)
  with pytest.raises(ValueError, match="num_examples"):
    ans.check_header(ans.Message.from_words(words), "cfg", 8, 3)
  with pytest.raises(ans.MessageError):
    ans.check_header(ans.Message.seeded(40, 1), "cfg", 7, 3)
