"""What every lesson notebook shares: the checkout on the import path, the run cache, one study
run at the lesson size, and the report's figure drawn from it.

The notebooks (``NN_<study>.ipynb``, each paired with a plain ``NN_<study>.py`` by jupytext) open
from this folder: importing this module puts the checkout first on ``sys.path``, since the study
modules (``experiments/``) and the figure builders (``figures/``) are never installed. Runs are
cached by config hash under ``$GFA_RESULTS`` or the checkout's ``results/`` (the folder
``python -m experiments`` and ``make reproduce`` use from the checkout), so a rerun only redraws
and the lessons share the runs they have in common.
"""
from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import matplotlib.pyplot as plt  # noqa: E402,F401  (the notebooks draw panels with lesson.plt)
import pandas as pd  # noqa: E402  (after the path: the imports below come from the checkout)

from experiments.plans import caveat  # noqa: E402
from experiments.runner import Context  # noqa: E402
from experiments.study_io import load_study, study_module  # noqa: E402
from experiments.verdicts import for_study  # noqa: E402
from experiments.verdicts.render import study_takeaways  # noqa: E402
from figures.outputs import OUTPUTS  # noqa: E402

pd.set_option("display.width", 160)

# The profile the lessons run; the test suite also executes every notebook on "smoke" (seconds).
PROFILE = os.environ.get("GFA_LESSON_PROFILE", "lesson")


def results_root() -> Path:
    return Path(os.environ["GFA_RESULTS"]) if os.environ.get("GFA_RESULTS") else ROOT / "results"


def _jobs() -> int:
    """Worker processes: every core in a notebook kernel; one in a script (a spawned worker would
    re-import the script, that is, rerun the lesson)."""
    return 1 if getattr(sys.modules.get("__main__"), "__file__", None) else 0


def context() -> Context:
    return Context(PROFILE, results_root(), jobs=_jobs(), progress=True)


def run(*names: str) -> dict[str, dict[str, pd.DataFrame]]:
    """Run (or read back) each study at the lesson size: ``{study: {table: frame}}``, the tables
    ``python -m figures`` draws from. Says how long it took and where the runs are."""
    ctx = context()
    started = time.perf_counter()
    tables = {}
    for name in names:
        if load_study(ctx, name) is None:
            study_module(name).run(ctx=ctx)
        tables[name] = load_study(ctx, name)
    print(f"{', '.join(names)} (profile {PROFILE}): {time.perf_counter() - started:.0f} s; runs in {ctx.root}")
    if caveat(PROFILE):
        print(caveat(PROFILE))
    return tables


def figure(key: str, tables: dict):
    """Figure ``key`` of the report (F2, F5, ...) drawn from these tables, as a PNG image a
    notebook shows (the builders draw off-screen, for files); outside a notebook the PNG is
    written under the results root and its path returned."""
    fig = OUTPUTS[key].build(tables)
    fig.suptitle(f"{key} at profile {PROFILE}: {OUTPUTS[key].title}", fontsize=9)
    return show(fig, key)


def show(fig, name: str):
    """A matplotlib figure as an inline PNG (or a file outside a notebook); the figure is closed."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    if "IPython" in sys.modules and sys.modules["IPython"].get_ipython() is not None:
        from IPython.display import Image  # noqa: PLC0415

        return Image(buf.getvalue())
    path = results_root() / "lessons" / PROFILE / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    print(f"figure: {path}")
    return path


def summary_row(tables: dict, study: str, test: str) -> pd.Series:
    """The row of ``study``'s summary whose ``test`` is ``test`` (estimate, interval, p, n)."""
    s = tables[study]["summary"]
    rows = s[s["test"] == test]
    if len(rows) != 1:
        raise KeyError(f"{study}: no single summary row {test!r}")
    return rows.iloc[0]


def takeaway(tables: dict, study: str) -> None:
    """Print the three-line takeaway (predicted, measured, verdict) of every rule that reads
    ``study``: the report's own rules (``experiments/verdicts``) applied to these lesson-size
    tables, studies the rules also read coming from the run cache."""
    ctx = context()
    needed = {s: tables.get(s) if tables.get(s) is not None else load_study(ctx, s)
              for r in for_study(study) for s in r.studies}
    print(study_takeaways(study, needed, PROFILE))
