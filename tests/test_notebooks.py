"""Every notebook in examples/notebooks runs headless, top to bottom, against a lab of its own.

nbclient executes each one in a kernel on this environment's Python (a
kernel spec written for the test, so a `python3` kernel installed elsewhere
on the machine cannot stand in), then the outputs are checked: no error, the
replica's name in an HTML repr, a PNG plot, and a progress bar (a widget,
since ipywidgets is in the notebook extra, or tqdm's text on stderr).

With VSPHERE_REPLICATOR_DOCS_IMAGES=docs/images set, the PNGs the run made
are written there as `<notebook>-<n>.png`: the pictures of docs/notebooks.md.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from vsphere_replicator.lab import ensure_lab_binary

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "examples" / "notebooks").glob("*.ipynb"))
REPLICA = "lab-vm-0001-replica"  # both notebooks protect lab-vm-0001 of their own lab
WIDGET = "application/vnd.jupyter.widget-view+json"
TEXT_BAR = re.compile(r"\d+%\|")  # tqdm's text bar: " 42%|████"
IMAGES_ENV = "VSPHERE_REPLICATOR_DOCS_IMAGES"
KERNEL = "vsphere-replicator-test"

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def kernel_spec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A kernel spec that runs ipykernel on this very interpreter (the venv's), found through JUPYTER_PATH.

    The lab is built here first, so the notebooks' `start_lab` cells never wait for a Go build.
    """
    ensure_lab_binary()
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "vsphere-replicator tests", "language": "python"})
    )
    saved = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(root)
    try:
        yield KERNEL
    finally:
        if saved is None:
            del os.environ["JUPYTER_PATH"]
        else:
            os.environ["JUPYTER_PATH"] = saved


def read(path: Path) -> Any:
    """The notebook at `path`, in format version 4 (nbformat is untyped)."""
    return nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]  # nbformat has no annotations


def outputs(notebook: Any) -> list[dict[str, Any]]:
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]


def test_there_are_notebooks_to_run() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"first-replication.ipynb", "rpo-under-load.ipynb"}


def test_the_committed_notebooks_hold_no_outputs() -> None:
    for path in NOTEBOOKS:
        notebook = read(path)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_notebook_runs_and_shows_reprs_plots_and_progress(
    path: Path, kernel_spec: str, tmp_path: Path
) -> None:
    notebook = read(path)
    client = NotebookClient(
        notebook,
        kernel_name=kernel_spec,
        timeout=120,  # per cell; a cell that hangs fails the test instead of the suite
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    shown = outputs(notebook)

    errors = [o for o in shown if o["output_type"] == "error"]
    assert errors == [], "\n".join(f"{e['ename']}: {e['evalue']}" for e in errors)
    stderr = "".join(o.get("text", "") for o in shown if o.get("name") == "stderr")
    assert "Traceback" not in stderr

    html = [o["data"]["text/html"] for o in shown if "text/html" in o.get("data", {})]
    assert any(REPLICA in h for h in html), "no HTML repr names the replica"
    assert all("<script" not in h for h in html if 'class="vr-repr"' in h)

    images = [o["data"]["image/png"] for o in shown if "image/png" in o.get("data", {})]
    assert images, "no plot was drawn"
    pngs = [base64.b64decode(image) for image in images]
    assert all(png.startswith(b"\x89PNG") for png in pngs)

    widgets = [o for o in shown if WIDGET in o.get("data", {})]
    assert widgets or TEXT_BAR.search(stderr), "no progress bar"

    if target := os.environ.get(IMAGES_ENV):
        directory = Path(target)
        directory.mkdir(parents=True, exist_ok=True)
        for number, png in enumerate(pngs, start=1):
            (directory / f"{path.stem}-{number}.png").write_bytes(png)
