"""Sample quality in --mode=sample: generative perplexity under a trained causal baseline, and
the Fashion-MNIST classifier's Fréchet distance. The parts that need no run: test_quality.py."""

import json
import math
import os
import shutil

import numpy as np
import pytest

import tiny
from prime_jax import config as config_lib, data, evaluate, experiment, sample, sample_quality, train
from prime_jax.data import embedded, images
from prime_jax.quality import fashion_mnist, text


@pytest.fixture(scope="module")
def ar_workdir(tmp_path_factory):
  """A tiny causal baseline (ℓ = 1, causal transformer) trained for a few steps."""
  path = str(tmp_path_factory.mktemp("ar") / "run")
  train.train_and_evaluate(tiny.config_from_arg("baseline=ar", train__num_steps=6,
                                                  train__checkpoint_every=6), path)
  return path


def test_scorer_nll_equals_the_ar_eval_nll(ar_workdir):
  """gen-ppl of held-out data under the scorer = exp(NLL) that evaluate_split reports for it."""
  scorer = sample_quality.load_scorer(ar_workdir, batch_size=8)
  assert scorer.step == 6
  run = scorer.run
  _, state = experiment.restore(run, ar_workdir)
  ev = evaluate.evaluate_split(run, state.ema_params, split="validation", batch_size=8,
                              num_batches=2, num_time_samples=1, seed=0)
  loader = data.make_loader(run.config.data, "validation", batch_size=8, shuffle=False,
                            num_epochs=1, drop_remainder=True)
  it = iter(loader)
  tokens = np.concatenate([next(it)["tokens"] for _ in range(2)])
  got = text.generative_perplexity(scorer.log_prob_fn, tokens, batch_size=5, skip_first=False)
  assert got["num_tokens"] == ev["num_tokens"] == 16 * 32
  assert got["nats_per_token"] == pytest.approx(ev["nll_nats"], rel=1e-5)
  assert got["gen_ppl"] == pytest.approx(ev["nll_perplexity"], rel=1e-5)
  assert math.isfinite(got["gen_ppl"]) and got["gen_ppl"] > 1.0


def test_sample_mode_scores_samples_with_the_scorer(ar_workdir, trained, tmp_path):
  """Samples of a copy of the session's tiny run (conftest's `trained`), which other modules
  train anyway, scored by the causal baseline."""
  workdir = str(tmp_path / "mdm")
  shutil.copytree(trained, workdir)
  config = tiny.config(**tiny.CHECKPOINTED, sample__steps=8, sample__scorer_workdir=ar_workdir)
  summary = sample.sample(config, workdir)
  q = summary["quality"]
  for key in ("gen_ppl", "gen_nats_per_token", "unigram_entropy", "reference_gen_ppl",
              "reference_unigram_entropy"):
    assert math.isfinite(q[key]), (key, q)
  assert q["gen_ppl"] == pytest.approx(math.exp(q["gen_nats_per_token"]))
  assert q["gen_ppl_num_tokens"] == 8 * 31  # The first column (no context) is left out.
  assert 0.0 < q["unigram_entropy"] <= math.log(32)
  assert q["reference_num_examples"] == 8 and q["scorer_step"] == 6
  with open(summary["files"]["summary"]) as f:
    assert json.load(f)["quality"]["gen_ppl"] == pytest.approx(q["gen_ppl"])


@pytest.mark.parametrize("overrides,match", [
    (dict(data__name="shakespeare_chars"),
     r"vocabulary: 256 tokens \(bytes, dataset 'shakespeare_bytes'\) in the scorer, \d+ tokens "
     r"\(chars, dataset 'shakespeare_chars'\) in the sampled model"),
    (dict(data__seq_len=64), r"sequence length: 32 in the scorer, 64 in the sampled model"),
])
def test_scorer_that_does_not_fit_is_refused_before_sampling(ar_workdir, tmp_path, overrides,
                                                             match):
  config = tiny.config(sample__scorer_workdir=ar_workdir, **overrides)
  # The workdir has no checkpoint: the scorer is checked first.
  with pytest.raises(ValueError, match=r"config.sample.scorer_workdir=.*cannot score.*" + match):
    sample.sample(config, str(tmp_path / "untrained"))


def test_scorer_must_be_the_causal_baseline(tmp_path):
  config = tiny.config()
  os.makedirs(tmp_path / "mdm")
  config_lib.save_json(config, str(tmp_path / "mdm"))
  loaded = config_lib.load_json(str(tmp_path / "mdm"))
  assert loaded.model.to_dict() == config.model.to_dict()
  with pytest.raises(ValueError, match=r"diffusion.objective='valid'; scoring samples needs the "
                                       r"causal baseline"):
    sample_quality.load_scorer(str(tmp_path / "mdm"))
  with pytest.raises(FileNotFoundError, match=r"config.json does not exist"):
    sample_quality.load_scorer(str(tmp_path / "nothing"))


def test_fd_in_sample_mode_against_cached_test_statistics(classifier_path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "fmnist_config", os.path.join(tiny.ROOT, "configs", "fashion_mnist.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("levels=16")
  config.sample.fd_classifier = classifier_path
  run = experiment.build(config)
  measure = sample_quality.sample_metrics(config, run)
  cached = [f for f in os.listdir(os.path.dirname(classifier_path)) if "test_stats_L16" in f]
  assert len(cached) == 1
  # The test images themselves, as tokens at 16 levels: FD to their own statistics is 0.
  tokens = images.quantise(embedded.fashion_mnist_local("validation"), 256, 16)
  q = measure(tokens)
  _, sigma = fashion_mnist.reference_statistics(classifier_path, 16)
  assert abs(q["fd_fashion_mnist"]) < 1e-8 * 2 * np.trace(sigma)
  assert q["fd_num_samples"] == 10000
  part = measure(tokens[:2000])["fd_fashion_mnist"]
  flat = measure(np.full_like(tokens[:2000], 7))["fd_fashion_mnist"]
  print(f"FD 2000 test images {part:.4f}, 2000 flat grey images {flat:.4f}")
  assert 0 < part < flat / 20


def test_fd_classifier_on_text_data_is_refused(tmp_path):
  """The dataset is checked before the classifier file is read."""
  with pytest.raises(ValueError, match=r"fd_classifier is set but dataset 'shakespeare_bytes' "
                                       r"is not Fashion-MNIST"):
    run = experiment.build(tiny.config(sample__fd_classifier=str(tmp_path / "missing.msgpack")))
    sample_quality.sample_metrics(run.config, run)
