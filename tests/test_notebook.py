"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel (nbclient + ipykernel, a new process that
finds the Numba cache the earlier tests wrote), and its cells print what they say: the chat answer, the streamed
text, the completion, an answer its regex grammar allows, and a model that is freed at the end."""

import os
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"
                   and o.get("name") == "stdout")


def test_quickstart_notebook_runs_in_a_kernel(smollm2_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MINIRS_SMOLLM2": str(smollm2_path), "MINIRS_DEVICE": "cpu"}
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute(
        env=env)  # a cell that raises fails here (CellExecutionError)
    code = [c for c in nb.cells if c.cell_type == "code"]
    loaded, answer, streamed, completed, constrained = (_text(c) for c in code[:5])
    assert re.match(r"SmolLM2-135M-Instruct\.Q4_1\.gguf on cpu$", loaded.strip()), loaded
    assert "Paris" in answer and re.search(r"\d+ prompt tokens, \d+ new tokens", answer), answer
    assert re.search(r"[A-Za-z]{3,}", streamed), streamed
    assert re.search(r"[A-Za-z]{3,}.* (length|stop)$", completed.strip()), completed
    assert constrained.strip() in ("yes", "no"), constrained  # the regex grammar's language
    assert not any(o.get("name") == "stderr" and "Traceback" in o.get("text", "") for c in code
                   for o in c.get("outputs", []))
