"""The lessons (lessons/NN_<study>.py + .ipynb): one per study in teaching order, each pair in sync,
each asking before it answers; every notebook executes (on the smoke profile's cached runs); the
lesson profile shows the effect lessons 1 and 2 say a student sees."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments import STUDIES
from experiments import gradients_vs_importance as gvi
from experiments.fanin_vs_gradients import configs as fanin_configs
from experiments.plans import plan
from experiments.runner import Context, run_many
from experiments.units import unit_table

jupytext = pytest.importorskip("jupytext")

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ROOT / "lessons"
SOURCES = sorted(LESSONS.glob("[0-9][0-9]_*.py"))


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_one_lesson_per_study_in_teaching_order():
    assert [re.sub(r"^\d\d_", "", p.stem) for p in SOURCES] == list(STUDIES)
    assert [p.stem[:2] for p in SOURCES] == [f"{i:02d}" for i in range(1, len(STUDIES) + 1)]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_and_script_are_in_sync(source):
    """The .ipynb holds exactly the cells of its .py (``jupytext --sync lessons/*.py`` after an
    edit), committed without outputs."""
    notebook = source.with_suffix(".ipynb")
    assert notebook.is_file(), f"{notebook.name} missing: jupytext --to ipynb {source}"
    py, nb = jupytext.read(source), jupytext.read(notebook)
    assert _cells(py) == _cells(nb), f"{notebook.name} differs from {source.name}: jupytext --sync {source}"
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{notebook.name} has outputs"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_lesson_asks_before_it_answers_and_links_its_sources(source):
    cells = _cells(jupytext.read(source))
    guess = next(i for i, (kind, text) in enumerate(cells) if kind == "markdown" and "Your guess first" in text)
    first_run = next(i for i, (kind, text) in enumerate(cells) if kind == "code" and "lesson.run(" in text)
    assert guess < first_run, "the question must come before the cell that answers it"
    first = cells[0][1]
    study = re.sub(r"^\d\d_", "", source.stem)
    assert f"(../experiments/{study}.py)" in first and "(../paper/REPORT.md)" in first
    takeaway = next(i for i, (kind, text) in enumerate(cells) if kind == "code" and "lesson.takeaway(" in text)
    assert f'lesson.takeaway(tables, "{study}")' in cells[takeaway][1] and first_run < takeaway
    reading = cells[-1][1]
    assert reading.startswith("## Reading it") and len(reading) > 400


@pytest.fixture(scope="module")
def kernel_env(smoke_root):
    """The notebooks' kernel: this interpreter (its folder first on PATH: the kernelspec runs
    ``python``), the smoke profile and the session's smoke run cache, one torch thread."""
    saved = dict(os.environ)
    os.environ.update(GFA_LESSON_PROFILE="smoke", GFA_RESULTS=str(smoke_root), OMP_NUM_THREADS="1",
                      TQDM_DISABLE="1", MPLBACKEND="Agg",
                      PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    yield smoke_root
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_lesson_notebook_executes(source, kernel_env):
    """Every cell runs in a Jupyter kernel from the lesson's own folder (not the repository root),
    and the lesson draws at least one figure."""
    nbclient = pytest.importorskip("nbclient")
    nb = jupytext.read(source.with_suffix(".ipynb"))
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(LESSONS)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure drawn"
    text = "".join(o.get("text", "") for o in outputs)
    assert "profile smoke" in text and "mean nothing" in text  # the caveat, said where the numbers are
    assert re.search(r"^[CH]\d+ verdict: ", text, flags=re.M), "no takeaway printed"


@pytest.mark.slow
def test_lesson_profile_shows_what_lessons_1_and_2_promise(tmp_path):
    """At the lesson size, in every one-head Transformer run, A falls from the first block to the
    last (the last below half the first) and ranks with fan-in (Spearman >= 0.7); and ablation
    importance rises with A (OLS slope, clustered by run, interval above 0). The numbers these
    lessons' text quotes come from the same runs."""
    ctx = Context("lesson", tmp_path, jobs=2, progress=False)
    runs = [(d, c) for d, c in fanin_configs("lesson") if d["family"] == "transformer" and d["supervision"] == "final"]
    assert len(runs) == 2
    results = run_many([c for _, c in runs], ctx)
    units = []
    for (desc, _), res in zip(runs, results):
        u = unit_table(res, "block", **desc)
        a = u.sort_values("order")["A"].to_numpy()
        assert a[-1] < 0.5 * a[0], a
        assert u["A"].rank().corr(u["F"].rank()) >= 0.7, u[["F", "A"]]
        units.append(gvi.score_run(res, plan("lesson").importance, desc))
    summary = gvi.summarize(pd.concat(units, ignore_index=True))
    slope = summary[summary["test"] == "transformer: OLS ablation_norm ~ A_norm"].iloc[0]
    assert slope["estimate"] > 0 and slope["ci_low"] > 0, slope
    assert np.isfinite(slope["ci_high"])
