"""Writes the datasets tfds does not serve well as ArrayRecord token streams, and fetches
tokenizer files.

  python -m prime_jax.data.prepare openwebtext --out=DIR [--input=FILES] [--tokenizer=gpt2]
  python -m prime_jax.data.prepare text8 --out=DIR [--input=text8.zip]
  python -m prime_jax.data.prepare gpt2_tiktoken --out=~/.cache/prime_jax [--input=SDIST]
  python -m prime_jax.data.prepare bert_vocab --out=~/.cache/prime_jax [--input=vocab.txt]

OpenWebText: documents in order, each followed by EOS; the last `--num_validation_docs`
(100,000, as MDLM) are the validation split. Without --input it reads the Hugging Face
dataset (needs `datasets` and internet); --input takes .txt files (one document each),
.jsonl files (one {"text": ...} document per line) or folders of .txt files; globs work.
text8: the first 90% of the characters are train, the next 5% validation, the last 5% test
(90M/5M/5M for the real file); stored as ids 0..26 with no separator.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from typing import Iterator, Optional, Sequence

from prime_jax.data import streams, tokenizers

TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
BERT_VOCAB_URL = "https://huggingface.co/bert-base-uncased/resolve/main/vocab.txt"
WHISPER_SDIST = "openai-whisper==20250625"
GPT2_MEMBER = "whisper/assets/gpt2.tiktoken"


def _log(msg: str) -> None:
  print(msg, file=sys.stderr)


def _input_files(spec: str) -> list[str]:
  paths: list[str] = []
  for part in spec.split(","):
    matches = sorted(glob.glob(os.path.expanduser(part))) or [part]
    for path in matches:
      if os.path.isdir(path):
        for folder, _, files in sorted(os.walk(path)):
          paths += sorted(os.path.join(folder, f) for f in files if f.endswith(".txt"))
      elif os.path.isfile(path):
        paths.append(path)
      else:
        raise FileNotFoundError(f"--input: {path} does not exist")
  if not paths:
    raise FileNotFoundError(f"--input={spec} names no files")
  return paths


def local_documents(files: Sequence[str]) -> Iterator[str]:
  """Documents of local files: a .txt file is one, a .jsonl line {"text": ...} is one."""
  for path in files:
    if path.endswith(".jsonl"):
      with open(path, encoding="utf-8") as f:
        for line in f:
          if line.strip():
            yield json.loads(line)["text"]
    else:
      with open(path, encoding="utf-8") as f:
        yield f.read()


def _hf_documents(hf_name: str):
  import datasets  # pylint: disable=g-import-not-at-top
  ds = datasets.load_dataset(hf_name, split="train")
  return len(ds), (row["text"] for row in ds)


def prepare_openwebtext(out: str, input_spec: Optional[str], tokenizer: str,
                        tokenizer_path: Optional[str], num_validation_docs: int,
                        hf_name: str, batch: int = 1024,
                        chunk_tokens: int = streams.DEFAULT_CHUNK_TOKENS) -> dict:
  """Tokenises OpenWebText into train/validation token streams under `out`."""
  tok = tokenizers.get_tokenizer(tokenizer, tokenizer_path)
  if tok.eos_id is None:
    raise ValueError(f"tokenizer {tokenizer!r} has no EOS to join documents with")
  if input_spec:
    files = _input_files(input_spec)
    total = sum(1 for _ in local_documents(files))
    docs = local_documents(files)
  else:
    total, docs = _hf_documents(hf_name)
  n_val = min(num_validation_docs, total)
  writers = {s: streams.StreamWriter(out, "openwebtext", tok.name, s, tok.vocab_size,
                                     chunk_tokens, source=input_spec or hf_name)
             for s in ("train", "validation")}
  encode_batch = getattr(tok, "encode_batch", None)

  def flush(texts: list[str], first_index: int) -> None:
    ids = encode_batch(texts) if encode_batch else [tok.encode(t) for t in texts]
    for k, doc in enumerate(ids):
      split = "train" if first_index + k < total - n_val else "validation"
      writers[split].write(doc)
      writers[split].write([tok.eos_id], documents=0)

  pending: list[str] = []
  seen = 0
  for doc in docs:
    pending.append(doc)
    if len(pending) == batch:
      flush(pending, seen)
      seen += len(pending)
      pending = []
  if pending:
    flush(pending, seen)
  return {s: w.close() for s, w in writers.items()}


def _read_text8(input_path: Optional[str], out: str) -> str:
  if input_path is None:
    input_path = os.path.join(os.path.expanduser(out), "text8.zip")
    if not os.path.isfile(input_path):
      _log(f"downloading {TEXT8_URL}")
      urllib.request.urlretrieve(TEXT8_URL, input_path)
  input_path = os.path.expanduser(input_path)
  if zipfile.is_zipfile(input_path):
    with zipfile.ZipFile(input_path) as z:
      return z.read(z.namelist()[0]).decode("ascii")
  with open(input_path, encoding="ascii") as f:
    return f.read()


def text8_split_sizes(n: int) -> dict:
  """90% / 5% / 5% of n characters (90M/5M/5M for the 100M-character file)."""
  n_train, n_val = n * 90 // 100, n * 5 // 100
  return {"train": n_train, "validation": n_val, "test": n - n_train - n_val}


def prepare_text8(out: str, input_path: Optional[str],
                  chunk_tokens: int = streams.DEFAULT_CHUNK_TOKENS) -> dict:
  """Writes text8 as character-id streams with the 90/5/5 split."""
  data = _read_text8(input_path, out).strip("\n")
  tok = tokenizers.get_tokenizer("chars", charset="text8")
  ids = tok.encode(data)
  metas, start = {}, 0
  for split, size in text8_split_sizes(len(ids)).items():
    w = streams.StreamWriter(out, "text8", "chars", split, tok.vocab_size, chunk_tokens)
    w.write(ids[start:start + size])
    metas[split] = w.close()
    start += size
  return metas


def _cache_target(out: str, name: str) -> str:
  """The path of `name` in the folder `out` (~ expanded), which is created if missing."""
  out = os.path.expanduser(out)
  os.makedirs(out, exist_ok=True)
  return os.path.join(out, name)


def fetch_gpt2_tiktoken(out: str, input_path: Optional[str]) -> str:
  """Puts gpt2.tiktoken in `out`, from a local copy or the openai-whisper source package."""
  target = _cache_target(out, tokenizers.GPT2_RANKS_FILE)
  if os.path.isfile(target):
    return target
  with tempfile.TemporaryDirectory() as tmp:
    if input_path is None:
      done = subprocess.run(
          [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
           ":all:", WHISPER_SDIST, "-d", tmp], capture_output=True, text=True, check=False)
      if done.returncode:
        raise RuntimeError(f"pip download {WHISPER_SDIST} failed:\n{done.stderr}")
      input_path = glob.glob(os.path.join(tmp, "openai_whisper-*.tar.gz"))[0]
    input_path = os.path.expanduser(input_path)
    if input_path.endswith(".tiktoken"):
      shutil.copyfile(input_path, target + ".tmp")
    else:
      with tarfile.open(input_path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(GPT2_MEMBER))
        with open(target + ".tmp", "wb") as f:
          f.write(tar.extractfile(member).read())
  os.replace(target + ".tmp", target)
  return target


def fetch_bert_vocab(out: str, input_path: Optional[str]) -> str:
  """Puts bert-base-uncased's vocab.txt in `out` (downloaded unless --input gives it)."""
  target = _cache_target(out, tokenizers.BERT_VOCAB_FILE)
  if os.path.isfile(target):
    return target
  if input_path:
    shutil.copyfile(os.path.expanduser(input_path), target + ".tmp")
  else:
    urllib.request.urlretrieve(BERT_VOCAB_URL, target + ".tmp")
  os.replace(target + ".tmp", target)
  return target


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m prime_jax.data.prepare",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("dataset", choices=["openwebtext", "text8", "gpt2_tiktoken",
                                          "bert_vocab"])
  parser.add_argument("--out", required=True, help="data_dir (datasets) or cache folder")
  parser.add_argument("--input", default=None, help="local input instead of downloading")
  parser.add_argument("--tokenizer", default="gpt2", choices=["gpt2", "bert-base-uncased",
                                                               "bytes"])
  parser.add_argument("--tokenizer_path", default=None)
  parser.add_argument("--num_validation_docs", type=int, default=100_000)
  parser.add_argument("--hf_name", default="Skylion007/openwebtext")
  parser.add_argument("--chunk_tokens", type=int, default=streams.DEFAULT_CHUNK_TOKENS)
  args = parser.parse_args(argv)
  if args.dataset == "openwebtext":
    metas = prepare_openwebtext(args.out, args.input, args.tokenizer, args.tokenizer_path,
                                args.num_validation_docs, args.hf_name,
                                chunk_tokens=args.chunk_tokens)
  elif args.dataset == "text8":
    metas = prepare_text8(args.out, args.input, chunk_tokens=args.chunk_tokens)
  elif args.dataset == "gpt2_tiktoken":
    print(fetch_gpt2_tiktoken(args.out, args.input))
    return 0
  else:
    print(fetch_bert_vocab(args.out, args.input))
    return 0
  for split, meta in metas.items():
    print(f"{split}: {meta['num_tokens']} tokens, {meta['num_documents']} documents")
  return 0


if __name__ == "__main__":
  sys.exit(main())
