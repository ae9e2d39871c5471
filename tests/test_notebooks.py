"""The demo notebooks (notebooks/NN_name.py, jupytext percent format, each paired with its .ipynb).

Fast: every .ipynb holds exactly jupytext's conversion of its .py (cell types and sources) and no
outputs, and opens with its Colab badge. Slow: every notebook executes top to bottom in a fresh kernel
at the CI size (ARJAX_NOTEBOOK_SIZE=tiny) in a temporary working directory; a cell that raises fails
the test with the cell's error. Notebooks that convert released weights use the parity fixtures'
tiny checkpoints at that size and skip when the fixtures are absent.
"""
import re
import time

import pytest
from conftest import FIXTURES, REPO, UNOPTIMISED_XLA, optimised_xla_env

NOTEBOOKS = REPO / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
# what each notebook reads from ../shared/fixtures (or $ARJAX_FIXTURES) at the tiny size
FIXTURES_NEEDED = {"02_official_var": ("var_tiny",), "06_evaluate": ("fid",)}
# Tiny notebooks spend most of their time in XLA's compiler, and unoptimised machine code compiles about twice as
# fast (a tiny tokenizer run: 52-57 s -> 23-31 s; 01_quickstart 154 -> 97-113 s, 02 167 -> 110 s), changing nothing
# these runs check. 06 runs the FID Inception at 299 px, where unoptimised code computes 2x slower (10 images: 2.0 ->
# 4.3 s), losing what it saves compiling: it keeps XLA's default.
COMPUTE_BOUND = {"06_evaluate"}
CELL_TIMEOUT_S = 900  # per cell; the whole tiny notebooks take 1-4 min on a 2-core CPU
COLAB = "https://colab.research.google.com/github/arjax/arjax/blob/main/notebooks/"


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


def test_every_notebook_is_paired_in_sync_and_without_outputs():
    jupytext = pytest.importorskip("jupytext", reason="pip install -e '.[dev]' (jupytext) for the notebook checks")
    import nbformat
    assert len(SOURCES) >= 6, f"expected the six notebooks in {NOTEBOOKS}; found {[p.name for p in SOURCES]}"
    orphans = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb") if not p.with_suffix(".py").is_file())
    assert not orphans, f"{orphans} have no .py source (the .py is the source of truth)"
    for py in SOURCES:
        ipynb = py.with_suffix(".ipynb")
        fix = f"regenerate it: jupytext --to ipynb notebooks/{py.name}"
        assert ipynb.is_file(), f"{ipynb.name} is missing; {fix}"
        want, got = _cells(jupytext.read(py)), _cells(nbformat.read(ipynb, as_version=4))
        for i, (w, g) in enumerate(zip(want, got)):
            assert g == w, f"{ipynb.name} cell {i} differs from {py.name}:\n--- .py\n{w[1]}\n--- .ipynb\n{g[1]}\n{fix}"
        assert len(got) == len(want), f"{ipynb.name} has {len(got)} cells, {py.name} {len(want)}; {fix}"
        nb = nbformat.read(ipynb, as_version=4)
        for i, c in enumerate(nb.cells):
            if c.cell_type == "code":
                assert not c.outputs and c.execution_count is None, \
                    f"{ipynb.name} cell {i} carries outputs (commit notebooks stripped); {fix}"
        first = nb.cells[0]
        assert first.cell_type == "markdown" and first.source.startswith("# "), f"{ipynb.name}: no title first"
        assert f"({COLAB}{ipynb.name})" in first.source, f"{ipynb.name}: the first cell lacks its Colab badge"
        assert any('os.environ.get("ARJAX_NOTEBOOK_SIZE", "full")' in c.source for c in nb.cells), \
            f"{ipynb.name} has no size switch"


@pytest.mark.slow  # 1-4 min each on a 2-core CPU (compiles dominate); .ci/run runs the slow set
@pytest.mark.parametrize("name", [p.stem for p in SOURCES])
def test_notebook_executes_at_the_tiny_size(name, tmp_path, monkeypatch):
    pytest.importorskip("nbclient", reason="pip install -e '.[dev]' (nbclient, ipykernel) to run the notebooks")
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    for fixture in FIXTURES_NEEDED.get(name, ()):
        if not (FIXTURES / fixture).is_dir():
            pytest.skip(reason=f"{name} reads {FIXTURES / fixture} at the CI size (tiny stand-ins for the released weights "
                        f"it downloads at full size), and that fixture is absent (set ARJAX_FIXTURES to the "
                        f"shared/fixtures folder)")
    monkeypatch.setenv("ARJAX_NOTEBOOK_SIZE", "tiny")  # the kernel inherits this process's environment
    monkeypatch.setenv("ARJAX_FIXTURES", str(FIXTURES))
    monkeypatch.setenv("ARJAX_CACHE", str(tmp_path / "cache"))  # no classifier or feature cache of the user's
    # most of a tiny notebook is XLA compiling: unoptimised code compiles faster (conftest.py sets it suite-wide)
    flags = optimised_xla_env()["XLA_FLAGS"]
    monkeypatch.setenv("XLA_FLAGS", flags if name in COMPUTE_BOUND else f"{flags} {UNOPTIMISED_XLA}".strip())
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.time()
    error = None
    try:
        client.execute()
    except CellExecutionError as e:  # the failing cell's source and its traceback, without terminal colours
        error = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    if error is not None:
        executed = tmp_path / f"{name}.executed.ipynb"
        nbformat.write(nb, executed)
        pytest.fail(f"{name}.ipynb failed after {time.time() - t0:.0f}s (outputs in {executed}):\n{error}",
                    pytrace=False)
    print(f"[notebook] {name}: {time.time() - t0:.0f}s at the tiny size")
