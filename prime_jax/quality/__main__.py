"""Sample-quality figures of saved samples, and the Fashion-MNIST classifier they need.

  python -m prime_jax.quality train-classifier [--out PATH]
  python -m prime_jax.quality fd --samples tokens.npy [--levels N]
  python -m prime_jax.quality fid --samples tokens.npy --weights FILE
      [--reference stats.npz | --dataset NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

import numpy as np

from prime_jax import data
from prime_jax.data import images
from prime_jax.quality import fashion_mnist, fid


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m prime_jax.quality",
                                   description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  default = fashion_mnist.DEFAULT_CLASSIFIER
  tr = sub.add_parser("train-classifier", help="train the Fashion-MNIST feature classifier")
  tr.add_argument("--out", default=default, help=f"default: {default}")
  tr.add_argument("--steps", type=int, default=1500)
  tr.add_argument("--batch_size", type=int, default=128)
  tr.add_argument("--seed", type=int, default=0)
  fd = sub.add_parser("fd", help="Fréchet distance of saved samples (tokens.npy) to the test set")
  fd.add_argument("--samples", required=True, help="tokens.npy written by --mode=sample")
  fd.add_argument("--levels", type=int, default=256, help="config.data.image_levels")
  fd.add_argument("--classifier", default=default)
  fi = sub.add_parser("fid", help="FID of saved samples (tokens.npy) with Inception features")
  fi.add_argument("--samples", required=True, help="tokens.npy written by --mode=sample")
  fi.add_argument("--weights", required=True,
                  help=f"pt_inception-2015-12-05-{fid.INCEPTION_SHA256_PREFIX}.pth from "
                       f"{fid.INCEPTION_WEIGHTS_URL}")
  fi.add_argument("--reference", default="",
                  help="a pytorch-fid .npz with mu and sigma; else --dataset's images")
  fi.add_argument("--dataset", default="", help="image dataset whose images give the reference")
  fi.add_argument("--split", default="train", help="its split (default: train)")
  fi.add_argument("--reference_examples", type=int, default=0, help="0 = the whole split")
  fi.add_argument("--levels", type=int, default=256, help="config.data.image_levels")
  fi.add_argument("--batch_size", type=int, default=fid.INCEPTION_BATCH)
  return parser


def main(argv: Optional[list[str]] = None) -> int:
  """CLI: `train-classifier [--out PATH]`, `fd --samples tokens.npy [--levels N]` and
  `fid --samples tokens.npy --weights FILE [--reference stats.npz | --dataset NAME]`."""
  args = _parser().parse_args(argv)
  if args.command == "fid":
    return _fid_command(args)
  if args.command == "train-classifier":
    r = fashion_mnist.train_classifier(args.out, steps=args.steps, batch_size=args.batch_size,
                                       seed=args.seed, log_every=max(args.steps // 10, 1))
    print(f"[classifier] test accuracy {r['accuracy']:.4f} after {r['steps']} steps "
          f"({r['seconds']:.0f} s) -> {r['path']}")
    return 0
  tokens = np.load(args.samples)
  r = fashion_mnist.fashion_fd(args.classifier, images.to_uint8(tokens, args.levels),
                               args.levels)
  print(json.dumps(r, indent=1))
  return 0


def _fid_command(args: argparse.Namespace) -> int:
  """FID of --samples against --reference's statistics or --dataset's images; prints JSON."""
  if bool(args.reference) == bool(args.dataset):
    raise SystemExit("fid: give exactly one of --reference stats.npz and --dataset NAME")
  fid.load_inception(args.weights)
  if args.reference:
    reference = fid.load_fid_statistics(args.reference, "--reference")
    described = args.reference
  else:
    config = data.default_config(args.dataset, image_levels=args.levels)
    reference = fid.inception_reference_statistics(args.weights, config, args.split,
                                                   args.reference_examples, args.batch_size)
    described = (f"{args.dataset} {args.split} split ({args.reference_examples or 'all'} images) "
                 f"at {args.levels} levels")
  samples = images.to_uint8(np.load(args.samples), args.levels)
  if samples.ndim == 3:
    samples = samples[..., None]
  r = {"fid": fid.fid(args.weights, samples, reference, args.batch_size),
       "fid_num_samples": len(samples), "fid_weights": args.weights, "fid_reference": described}
  print(json.dumps(r, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
