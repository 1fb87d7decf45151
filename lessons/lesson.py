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
from figures import beyond  # noqa: E402
from figures.claims import evaluate_claims  # noqa: E402
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


def verdicts(tables: dict, *keys: str):
    """The report's verdict on claims ``keys`` (C2, C5, ...; H1-H5 for the mechanism study), by
    the same declared rules as the full-size report (``figures/claims.py``, ``figures/beyond.py``),
    applied to these lesson-size tables: one paragraph per claim (Markdown in a notebook)."""
    frames = [evaluate_claims(tables).rename(columns={"claim": "key"})]
    if tables.get("mechanism") is not None:
        frames.append(beyond.evaluate(tables["mechanism"]).rename(columns={"hypothesis": "key"}))
    found = pd.concat(frames, ignore_index=True).set_index("key")
    text = "\n\n".join(f"**{k}: {found.loc[k, 'verdict']}** (profile {PROFILE}). {found.loc[k, 'measured here']}"
                         for k in keys)
    return _markdown(text)


def _markdown(text: str):
    if "IPython" in sys.modules and sys.modules["IPython"].get_ipython() is not None:
        from IPython.display import Markdown  # noqa: PLC0415

        return Markdown(text)
    print(text)
    return None
