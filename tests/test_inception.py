"""FID: the torch.save reader, the Flax FID Inception against pytorch-fid's own features, FID in
prime_jax.quality and in --mode=sample. The fixtures in tests/data come from
tests/data/make_inception_fixtures.py (run once with torch and pytorch-fid); these tests need
neither."""

import json
import os
import pickle
import types
import zipfile

import numpy as np
import pytest

import torch_files
from prime_jax import config as config_lib, data, experiment, sample, sample_quality, torch_state
from prime_jax.data import embedded, images
from prime_jax.models import inception
from prime_jax.quality import fid, frechet
from prime_jax.quality.__main__ import main

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


# --- The torch.save reader. ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["torch_state_zip.pth", "torch_state_legacy.pth"])
def test_reader_gives_the_saved_values_exactly(name):
  """Every dtype, views saved with their offset and stride, a Parameter and nested OrderedDicts."""
  path = os.path.join(DATA, name)
  assert torch_state.load(path)["epoch"] == 3
  got = torch_state.load_state_dict(path)
  want = torch_state.flatten(torch_files.reader_values())
  assert sorted(got) == sorted(want)  # The int 'epoch' is not a tensor and is left out.
  for key, value in want.items():
    assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
    assert got[key].tobytes() == value.tobytes(), key
  assert got["nested.layer.bias"].tolist() == [1, 1, 1] and got["window"][0, 0] == 0.0


def test_writer_round_trip(tmp_path):
  path = str(tmp_path / "state.pth")
  want = torch_state.flatten(torch_files.reader_values())
  torch_files.write_pth(path, torch_files.reader_values())
  got = torch_state.load_state_dict(path)
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    assert got[key].dtype == value.dtype and got[key].tobytes() == value.tobytes(), key


def _zip(path, records: dict) -> str:
  with zipfile.ZipFile(path, "w") as z:
    for name, raw in records.items():
      z.writestr(name, raw)
  return str(path)


class _RunsCode:
  def __reduce__(self):
    return (os.system, ("echo unpickled",))


def test_reader_refuses_what_is_not_a_state_dict(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nothing.pth does not exist \(expected a "
                                              r"torch.save file"):
    torch_state.load(str(tmp_path / "nothing.pth"))
  (tmp_path / "text.pth").write_text("not a checkpoint\n")
  with pytest.raises(torch_state.TorchFileError, match=r"text.pth is neither a zip archive nor "
                                                       r"torch's sequential format"):
    torch_state.load(str(tmp_path / "text.pth"))
  np.savez(tmp_path / "arrays.npz", a=np.zeros(2))
  with pytest.raises(torch_state.TorchFileError, match=r"arrays.npz is a zip archive without a "
                                                       r"single <dir>/data.pkl record"):
    torch_state.load(str(tmp_path / "arrays.npz"))
  evil = _zip(tmp_path / "evil.pth", {"archive/data.pkl": pickle.dumps(_RunsCode(), protocol=2)})
  with pytest.raises(torch_state.TorchFileError, match=r"evil.pth: refusing to unpickle "
                                                       r"\w+\.system; only tensors"):
    torch_state.load(evil)
  torch_files.write_pth(str(tmp_path / "full.pth"), {"w": np.ones(3, np.float32)})
  with zipfile.ZipFile(tmp_path / "full.pth") as z:
    records = {n: z.read(n) for n in z.namelist() if not n.endswith("data/0")}
  with pytest.raises(torch_state.TorchFileError, match=r"storage record archive/data/0 is "
                                                       r"missing"):
    torch_state.load(_zip(tmp_path / "cut.pth", records))
  torch_files.write_pth(str(tmp_path / "list.pth"), [np.ones(2, np.float32)])
  with pytest.raises(torch_state.TorchFileError, match=r"list.pth holds a list, not a state dict"):
    torch_state.load_state_dict(str(tmp_path / "list.pth"))


# --- The network against pytorch-fid. ------------------------------------------------------------

@pytest.fixture(scope="module")
def fixture():
  with np.load(os.path.join(DATA, "inception_features.npz")) as z:
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def torch_state_dict(fixture):
  """The seeded weights that the fixture script loaded into pytorch-fid, regenerated."""
  shapes = {str(k): tuple(int(d) for d in s.split("x")) if s else ()
            for k, s in zip(fixture["torch_keys"], fixture["torch_shapes"])}
  return torch_files.random_inception_state(shapes, seed=0)


@pytest.fixture(scope="module")
def weights_path(tmp_path_factory, torch_state_dict):
  """The same weights as a torch.save zip (95 MB, written at test time, never committed)."""
  path = str(tmp_path_factory.mktemp("inception") / "pt_inception-random.pth")
  torch_files.write_pth(path, torch_state_dict)
  return path


def test_weight_names_are_those_of_the_torch_model(fixture, torch_state_dict):
  required, optional = inception.expected_torch_keys()
  assert set(fixture["torch_keys"]) == set(required) | set(optional)
  assert len(required) == 94 * 5 and "fc.weight" in optional
  variables = inception.variables_from_torch(torch_state_dict)
  kernel = variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
  np.testing.assert_array_equal(  # OIHW -> HWIO.
      kernel, torch_state_dict["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
  assert kernel.shape == (1, 7, 128, 128)
  # Without the classifier and the BatchNorm counters (as older torch versions saved it).
  inception.variables_from_torch({k: torch_state_dict[k] for k in required})


def test_wrong_weight_names_are_listed(torch_state_dict):
  bad = dict(torch_state_dict)
  del bad["Mixed_5b.branch1x1.conv.weight"]
  bad["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
  bad["Conv2d_1a_3x3.bn.bias"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match=(
      r"weights.pth is not the FID Inception state dict .*: missing: "
      r"Mixed_5b.branch1x1.conv.weight; unexpected: AuxLogits.fc.weight; mis-shaped: "
      r"Conv2d_1a_3x3.bn.bias \(3,\) \(expected \(32,\)\)")):
    inception.variables_from_torch(bad, source="weights.pth")


def test_resize_is_torch_bilinear():
  """Half-pixel centres, edge clamping, rows summing to one; identity at equal sizes."""
  np.testing.assert_array_equal(inception.bilinear_matrix(5, 5), np.eye(5, dtype=np.float32))
  up = inception.bilinear_matrix(2, 4)  # torch: [[1, 0], [.75, .25], [.25, .75], [0, 1]].
  np.testing.assert_allclose(up, [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
  down = inception.bilinear_matrix(299, 32)
  np.testing.assert_allclose(down.sum(1), 1.0, rtol=1e-6)
  assert (down > 0).sum(1).max() == 2  # No antialiasing: two taps when shrinking.


def test_features_match_pytorch_fid(fixture, weights_path):
  """pool3 features of three 32×32 images through the .pth file, vs pytorch-fid's (float32).

  Measured: max |difference| 3e-5 for features up to 42 (7e-7 of the largest).
  """
  want = fixture["features"]
  got = fid.inception_features(weights_path, fixture["images"], batch_size=2)
  assert got.shape == (3, 2048) and got.dtype == np.float32
  scale = np.abs(want).max()
  print(f"max |flax - torch| {np.abs(got - want).max():.3g}, largest feature {scale:.3g}")
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)
  # Grey images are the same image in all three channels.
  grey = fixture["images"][:2, :, :, :1]
  np.testing.assert_array_equal(
      fid.inception_features(weights_path, grey, batch_size=2),
      fid.inception_features(weights_path, np.repeat(grey, 3, -1), batch_size=2))


# --- FID. ----------------------------------------------------------------------------------------

def test_frechet_distance_of_identical_statistics_is_zero():
  features = np.random.default_rng(0).normal(size=(1000, 256)) ** 2  # Full-rank covariance.
  mu, sigma = frechet.feature_statistics(features)
  assert abs(frechet.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)
  shifted = frechet.frechet_distance(mu + 0.5, sigma, mu, sigma)
  assert shifted == pytest.approx(0.25 * 256, rel=1e-6)


def _fashion(levels=16, **sample):
  config = config_lib.base_config()
  config.data.update(name="fashion_mnist_local", image_levels=levels)
  config.sample.update(sample)
  info = data.dataset_info(config.data)
  return config, types.SimpleNamespace(config=config, info=info, example_shape=info.example_shape)


def _test_tokens(num=4, levels=16):
  return images.quantise(embedded.fashion_mnist_local("validation")[:num], 256, levels)


def test_fid_in_sample_mode_against_the_dataset(weights_path):
  """Reference statistics from the first four test images, cached beside the weights; the same
  four images as samples have FID 0."""
  config, run = _fashion(inception_weights=weights_path, inception_reference="validation",
                         inception_reference_examples=4)
  measure = sample_quality.sample_metrics(config, run)
  cached = [f for f in os.listdir(os.path.dirname(weights_path))
            if "fashion_mnist_local_validation_L16_N4_" in f]
  assert len(cached) == 1 and cached[0].endswith(".npz")
  q = measure(_test_tokens())
  cache = os.path.join(os.path.dirname(weights_path), cached[0])
  mu, sigma = fid.load_fid_statistics(cache)
  assert abs(q["fid"]) < 1e-9 * np.trace(sigma)
  assert q["fid_num_samples"] == 4
  assert q["fid_reference"] == "fashion_mnist_local validation split (4 images) at 16 levels"
  line = sample.quality_line(q)  # pylint: disable=protected-access
  assert line.startswith(f"FID {q['fid']:.3f} (4 samples against fashion_mnist_local validation")


def test_fid_command_with_a_pytorch_fid_npz(weights_path, tmp_path, capsys):
  config, run = _fashion()
  ref = fid.inception_reference_statistics(weights_path, config.data, "validation", 4)
  np.savez(tmp_path / "ref.npz", mu=ref[0], sigma=ref[1])
  np.save(tmp_path / "tokens.npy", np.full_like(_test_tokens(), 7))  # Flat grey images.
  args = ["fid", "--samples", str(tmp_path / "tokens.npy"), "--weights", weights_path,
          "--levels", "16"]
  assert main(args + ["--reference", str(tmp_path / "ref.npz")]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["fid"] > 1e-3 * np.trace(ref[1]) and out["fid_num_samples"] == 4
  np.save(tmp_path / "tokens.npy", _test_tokens()[::-1])  # The same images, in another order.
  assert main(args + ["--dataset", "fashion_mnist_local", "--split",
                      "validation", "--reference_examples", "4"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert abs(out["fid"]) < 1e-9 * np.trace(ref[1])
  assert out["fid_reference"] == "fashion_mnist_local validation split (4 images) at 16 levels"
  # The same file as config.sample.inception_reference (measured in the test above).
  config, run = _fashion(inception_weights=weights_path,
                         inception_reference=str(tmp_path / "ref.npz"))
  assert callable(sample_quality.sample_metrics(config, run))


def test_fid_settings_that_cannot_work(weights_path, tmp_path):
  missing = str(tmp_path / "pt_inception.pth")
  config, run = _fashion(inception_weights=missing)
  with pytest.raises(FileNotFoundError, match=r"(?s)config.sample.inception_weights=.*"
                                              r"pt_inception.pth does not exist; download .*"
                                              r"6726825d.*releases/download/fid_weights/"):
    sample_quality.sample_metrics(config, run)
  (tmp_path / "notes.pth").write_text("weights go here\n")
  config, run = _fashion(inception_weights=str(tmp_path / "notes.pth"))
  with pytest.raises(ValueError, match=r"config.sample.inception_weights=.*notes.pth' cannot be "
                                       r"used: .*notes.pth is neither a zip archive"):
    sample_quality.sample_metrics(config, run)
  text = config_lib.base_config()
  text.sample.inception_weights = weights_path
  text_run = types.SimpleNamespace(config=text, info=data.dataset_info(text.data))
  with pytest.raises(ValueError, match=r"inception_weights is set but dataset "
                                       r"'shakespeare_bytes' is text: FID is for image samples"):
    sample_quality.sample_metrics(text, text_run)
  np.savez(tmp_path / "wrong.npz", mean=np.zeros(2048), cov=np.eye(2048))
  config, run = _fashion(inception_weights=weights_path,
                         inception_reference=str(tmp_path / "wrong.npz"))
  with pytest.raises(ValueError, match=r"config.sample.inception_reference=.*wrong.npz holds "
                                       r"\['cov', 'mean'\]; expected arrays 'mu' \(2048,\) and "
                                       r"'sigma'"):
    sample_quality.sample_metrics(config, run)
  config, run = _fashion(inception_weights=weights_path, inception_reference="test")
  with pytest.raises(ValueError, match=r"inception_reference='test' is invalid: expected a .npz "
                                       r".* or a split of 'fashion_mnist_local', one of "
                                       r"\('train', 'validation'\)"):
    sample_quality.sample_metrics(config, run)
  config.sample.inception_reference_examples = -1
  with pytest.raises(ValueError, match=r"config.sample.inception_reference_examples=-1 is "
                                       r"invalid"):
    config_lib.validate(config, 1)
