"""Writes the fixtures of tests/test_inception.py with real torch and pytorch-fid (not run by CI).

Needs torch, torchvision and pytorch-fid's source (`pip download --no-deps --no-binary :all:
pytorch-fid`, then PYTORCH_FID_SRC=<unpacked>/src) besides this project's requirements:

  PYTORCH_FID_SRC=/path/to/pytorch-fid-0.3.0/src python tests/data/make_inception_fixtures.py

Writes, beside this file:
* torch_state_zip.pth, torch_state_legacy.pth: `torch_files.reader_values()` saved with
  torch.save in its zip and its pre-1.6 format, with views and a Parameter saved as such.
* inception_features.npz: pytorch-fid's `InceptionV3` (eval, resize_input and normalize_input
  on) with the seeded weights of `torch_files.random_inception_state`, run on three 32×32 RGB
  images: the images, their 2048-d features, and the key names and shapes of the state dict.
"""

import collections
import os
import sys
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.dirname(os.path.dirname(HERE))]
# torchvision's compiled operators may not match the installed torch; the Inception model
# only needs its Python modules.
sys.modules.setdefault("torchvision._meta_registrations",
                       types.ModuleType("torchvision._meta_registrations"))

import torch  # noqa: E402  pylint: disable=g-import-not-at-top

import torch_files  # noqa: E402  pylint: disable=g-import-not-at-top

SEED = 0
NUM_IMAGES = 3


def reader_state() -> dict:
  values = torch_files.reader_values()
  out = {k: torch.from_numpy(np.array(v, order="C")) for k, v in values.items()
         if isinstance(v, np.ndarray) and v.dtype.name != "bfloat16"}
  out["bfloat16"] = torch.tensor(values["bfloat16"].astype(np.float32), dtype=torch.bfloat16)
  out["transposed"] = out["matrix"].t()
  out["window"] = out["matrix"][1:, 2:5]
  assert out["window"].storage_offset() == 8 and not out["transposed"].is_contiguous()
  out["param"] = torch.nn.Parameter(out["param"])
  nested = values["nested"]
  out["nested"] = collections.OrderedDict(
      layer=collections.OrderedDict((k, torch.from_numpy(v)) for k, v in nested["layer"].items()),
      step=torch.from_numpy(nested["step"]))
  out["nested"]._metadata = {"": {"version": 1}}  # As module state dicts carry.
  out["epoch"] = 3  # Not a tensor: kept by load, left out by load_state_dict.
  return out


def inception_fixture() -> dict:
  src = os.environ.get("PYTORCH_FID_SRC")
  if src:
    sys.path.insert(0, src)
  from pytorch_fid import inception  # pylint: disable=g-import-not-at-top
  state = {}

  def fake_download(url, *args, **kwargs):
    del args, kwargs
    assert url == inception.FID_WEIGHTS_URL, url
    return {k: torch.from_numpy(v) for k, v in state.items()}

  # The real file's layout: the model's own state dict, read from an unweighted build.
  inception.load_state_dict_from_url = lambda url, **kw: None
  original_load = torch.nn.Module.load_state_dict
  torch.nn.Module.load_state_dict = lambda self, sd, *a, **k: None
  try:
    shapes = {k: tuple(v.shape) for k, v in inception.fid_inception_v3().state_dict().items()}
  finally:
    torch.nn.Module.load_state_dict = original_load
  state.update(torch_files.random_inception_state(shapes, SEED))
  inception.load_state_dict_from_url = fake_download  # load_state_dict(strict=True) checks keys.
  model = inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()
  images = np.random.default_rng(SEED).integers(0, 256, (NUM_IMAGES, 32, 32, 3), np.uint8)
  x = torch.from_numpy(images.astype(np.float32) / 255).permute(0, 3, 1, 2)
  with torch.no_grad():
    features = model(x)[0][:, :, 0, 0].numpy()
  keys = sorted(shapes)
  return {"images": images, "features": features.astype(np.float32),
          "torch_keys": np.array(keys),
          "torch_shapes": np.array(["x".join(map(str, shapes[k])) for k in keys]),
          "torch_version": np.array(torch.__version__)}


def main() -> None:
  state = reader_state()
  torch.save(state, os.path.join(HERE, "torch_state_zip.pth"))
  torch.save(state, os.path.join(HERE, "torch_state_legacy.pth"),
             _use_new_zipfile_serialization=False)
  fixture = inception_fixture()
  np.savez_compressed(os.path.join(HERE, "inception_features.npz"), **fixture)
  f = fixture["features"]
  print(f"features {f.shape}: mean {f.mean():.4f}, std {f.std():.4f}, "
        f"fraction > 0 {(f > 0).mean():.3f}; {len(fixture['torch_keys'])} state-dict entries")


if __name__ == "__main__":
  main()
