"""Prints the lines of a requirements file whose exact pin is not installed (nothing if all are)."""

import importlib.metadata
import re
import sys


def missing(path: str) -> list[str]:
  out = []
  for line in open(path):
    line = line.split("#")[0].strip()
    m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^;\s]+)", line)
    if not m:
      continue
    name = re.sub(r"\[.*\]", "", m.group(1))
    try:
      if importlib.metadata.version(name) != m.group(2):
        out.append(line)
    except importlib.metadata.PackageNotFoundError:
      out.append(line)
  return out


if __name__ == "__main__":
  print("\n".join(l for p in sys.argv[1:] for l in missing(p)))
