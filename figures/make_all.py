"""Regenerate every figure and table of the paper reconstruction, and the reproduction report.

    python -m figures --profile default          # what `make reproduce` runs
    python -m figures --profile smoke --only F1,T5 --out /tmp/figs

Studies are run (or read back from the result cache: a finished study is only redrawn unless
``--force``), then every figure is drawn as PNG and PDF and every table written as CSV,
Markdown and LaTeX, each stamped with the profile, seeds, config hashes, corpus hash and package
version. The report (``REPORT.md``) states for each claim of the abstract what was measured.
"""
from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import pandas as pd

from experiments.common import Context, load_study, study_module
from gfa_theory.errors import ConfigError
from gfa_theory.train.store import results_root

from . import plots
from . import stamp as stamps

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Output:
    key: str
    kind: str  # "figure" | "table"
    title: str
    studies: tuple[str, ...]
    build: Callable[[dict], object] = field(repr=False)


# ---- figure builders: tables of the studies in, a matplotlib Figure out ------------------------

def _fig(n: int, width: float = 4.2, height: float = 3.3):
    fig, axs = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axs[0])


def f1(t):
    fig, (a, b) = _fig(2)
    plots.plot_fanin_theory(N=24, ax=a)
    plots.plot_repetition_theory(B=6, ax=b)
    return fig


def f2(t):
    u = t["fanin_vs_gradients"]["units"]
    fig, (a, b) = _fig(2)
    plots.plot_gradient_profile(u, "transformer", "final", "A_norm", ax=a)
    plots.plot_gradient_profile(u, "transformer", "final", "A_stream_norm", ax=b)
    b.set_title("transformer, one head: stream gradient at the branch output")
    return fig


def f3(t):
    u = t["fanin_vs_gradients"]["units"]
    fig, (a, b) = _fig(2)
    plots.plot_gradient_profile(u, "resnet", "final", "A_norm", ax=a)
    plots.plot_gradient_profile(u, "resnet", "final", "A_rms_norm", ax=b)
    return fig


def f4(t):
    u = t["fanin_vs_gradients"]["units"]
    fig, (a, b) = _fig(2)
    plots.plot_deep_supervision(u, "transformer", ax=a)
    plots.plot_deep_supervision(u, "resnet", ax=b)
    return fig


def f5(t):
    u = t["gradients_vs_importance"]["units"]
    fig, (a, b) = _fig(2)
    plots.plot_importance_vs_gradient(u, "transformer", ax=a)
    plots.plot_importance_vs_gradient(u, "resnet", ax=b)
    return fig


def f6(t):
    u = t["equalization"]["units"]
    fig, (a, b) = _fig(2)
    plots.plot_equalization(u, "adamw", ax=a)
    plots.plot_equalization(u, "sgd", ax=b)
    return fig


def f7(t):
    u = t["repetition"]["units"]
    fig, (a, b) = _fig(2)
    plots.plot_repetition(u, ax=a)
    plots.plot_repetition_fanin(u, ax=b)
    return fig


def t5(t):
    """Regression statistics of studies 1 and 2."""
    s1 = t["fanin_vs_gradients"]["summary"]
    s2 = t["gradients_vs_importance"]["summary"]
    s2 = s2[s2.test.str.contains("OLS|MixedLM|ablation vs A|bi vs A|random vs A")]
    return pd.concat([s1.assign(study="fan-in vs A"), s2.assign(study="A vs importance")], ignore_index=True)


OUTPUTS: dict[str, Output] = {o.key: o for o in [
    Output("F1", "figure", "Fan-in vs depth: symbolic closed forms and autograd counts", (), f1),
    Output("F2", "figure", "Transformer: accumulated gradient per block vs fan-in", ("fanin_vs_gradients",), f2),
    Output("F3", "figure", "ResNet: accumulated gradient per block vs fan-in", ("fanin_vs_gradients",), f3),
    Output("F4", "figure", "Deep supervision: accumulated gradient vs quadratic fan-in", ("fanin_vs_gradients",), f4),
    Output("F5", "figure", "Accumulated gradient vs post hoc (ablation) importance", ("gradients_vs_importance",), f5),
    Output("F6", "figure", "Gradient-norm equalization: per-block importance", ("equalization",), f6),
    Output("F7", "figure", "Parameter-shared repetition: per-block importance and fan-in", ("repetition",), f7),
    Output("T5", "table", "Regression statistics (fan-in vs A; A vs importance)",
           ("fanin_vs_gradients", "gradients_vs_importance"), t5),
]}

# Outputs contributed by optional modules (e.g. the efficiency studies) register themselves here.
for _extra in ("figures.efficiency",):
    try:
        importlib.import_module(_extra).register(OUTPUTS, Output)
    except ModuleNotFoundError as exc:
        if exc.name != _extra:
            raise


# ---- writing ----------------------------------------------------------------------------------

def save_figure(fig, out: Path, key: str, title: str, stamp: dict) -> list[Path]:
    fig.suptitle(f"{key}. {title}", fontsize=10, y=1.0)
    fig.text(0.995, 0.002, stamps.line(stamp), ha="right", va="bottom", fontsize=5, color="0.45")
    fig.tight_layout(rect=(0, 0.02, 1, 0.98))
    meta = json.dumps(stamp)
    paths = [out / f"{key}.png", out / f"{key}.pdf"]
    fig.savefig(paths[0], dpi=170, metadata={"Description": meta}, bbox_inches="tight")
    fig.savefig(paths[1], metadata={"Subject": meta, "Title": f"{key}. {title}", "CreationDate": None},
                bbox_inches="tight")  # no date: regenerating identical results gives identical files
    plt.close(fig)
    return paths + [stamps.write_sidecar(p, stamp) for p in paths]


def save_table(df: pd.DataFrame, out: Path, key: str, title: str, stamp: dict) -> list[Path]:
    line = stamps.line(stamp)
    csv, md, tex = out / f"{key}.csv", out / f"{key}.md", out / f"{key}.tex"
    csv.write_text(f"# {json.dumps(stamp)}\n" + df.to_csv(index=False))
    md.write_text(f"**{key}. {title}**\n\n{df.to_markdown(index=False, floatfmt='.4g')}\n\n_{line}_\n")
    body = df.to_latex(index=False, float_format=lambda v: f"{v:.4g}", caption=f"{title}",
                       label=f"tab:{key.lower()}", longtable=len(df) > 30)
    tex.write_text(f"% {line}\n% {json.dumps(stamp)}\n{body}")
    return [csv, md, tex] + [stamps.write_sidecar(p, stamp) for p in (csv, md, tex)]


def default_out(profile: str) -> Path:
    """Default profile: committed under figures/generated (the README shows it)."""
    return REPO / "figures" / "generated" if profile == "default" else results_root() / "figures" / profile


def build(args) -> int:
    from tqdm.auto import tqdm

    t0 = time.time()
    keys = list(OUTPUTS) if not args.only else [k.strip().upper() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in OUTPUTS]
    if unknown:
        raise ConfigError(f"unknown output '{unknown[0]}' (choices: {', '.join(OUTPUTS)})")
    if args.jobs < 0:
        raise ConfigError(f"--jobs must be >= 0, got {args.jobs}")
    ctx = Context(args.profile, results_root(args.results), args.jobs, args.force, not args.no_progress)
    out = Path(args.out) if args.out else default_out(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    needed = list(dict.fromkeys(s for k in keys for s in OUTPUTS[k].studies))
    report = not args.only
    total = len(needed) + len(keys) + int(report)
    tables: dict[str, dict] = {}
    metas: dict[str, dict] = {}
    with tqdm(total=total, desc="reproduce", disable=args.no_progress, dynamic_ncols=True) as bar:
        for name in needed:
            bar.set_postfix_str(f"study {name}")
            if args.force or load_study(ctx, name) is None:
                study_module(name).run(ctx=ctx)
            tables[name] = load_study(ctx, name)
            metas[name] = json.loads((ctx.study_dir(name) / "meta.json").read_text())
            bar.update(1)
        written = []
        for k in keys:
            o = OUTPUTS[k]
            bar.set_postfix_str(k)
            st = stamps.merge([metas[s] for s in o.studies], ctx.profile, k)
            obj = o.build(tables)
            written += (save_figure(obj, out, k, o.title, st) if o.kind == "figure"
                        else save_table(obj, out, k, o.title, st))
            bar.update(1)
        if report:
            from . import report as rep

            bar.set_postfix_str("report")
            written += rep.write_report(tables, metas, ctx, out)
            bar.update(1)
    print(f"{len(written)} files in {out} ({time.time() - t0:.1f} s)")
    return 0

