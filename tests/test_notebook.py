"""The quickstart notebook runs top to bottom, so it never rots."""

import os

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install nbformat (test extra)")
nbclient = pytest.importorskip("nbclient", reason="pip install nbclient ipykernel (test extra)")

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_quickstart_executes():
  path = os.path.join(ROOT, "examples", "quickstart.ipynb")
  nb = nbformat.read(path, as_version=4)
  env_path = os.environ.get("PYTHONPATH", "")
  os.environ["PYTHONPATH"] = os.path.abspath(ROOT) + (os.pathsep + env_path if env_path else "")
  try:
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": ROOT}}).execute()
  finally:
    os.environ["PYTHONPATH"] = env_path
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "valid bound" in outputs and "network calls" in outputs
  first, last = [float(line.split("'loss_bits': ")[1].split(",")[0])
                 for line in outputs.splitlines() if line.startswith(("10 ", "30 "))]
  assert last < first  # thirty steps visibly lower the training loss
