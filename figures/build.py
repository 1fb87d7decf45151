"""The build stage of ``python -m figures``: the one place that writes the outputs.

Studies are run (or read back from the result cache: a finished study is only redrawn unless
``--force``), then every output of :data:`figures.outputs.OUTPUTS` is built and written, figures
as PNG and PDF and tables as CSV, Markdown and LaTeX, each stamped with the profile, seeds,
config hashes, corpus hash and package version; last, the claims are judged and the report
written (:mod:`figures.report`).
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from tqdm.auto import tqdm

from experiments import prediction as prediction_study
from experiments import scale as scale_study
from experiments.__main__ import start_executor
from experiments.plans import STUDY_ONLY, caveat
from experiments.runner import Context
from experiments.study_io import read_tables, study_module
from experiments.upgrade import current, stale
from experiments.verdicts import judge_all
from experiments.verdicts import prediction as prediction_verdicts
from experiments.verdicts.scale import along_scale
from gfa_theory.cli.outdir import reproduce_names
from gfa_theory.errors import ConfigError
from gfa_theory.train.store import results_root, write_bytes_atomic, write_text_atomic
from gfa_theory.untrusted import read_json

from . import report
from . import stamp as stamps
from .outputs import ALONG_SCALE, DRAWN_FOR, GENERATED, OUTPUTS, PREDICTION

ALL = {**OUTPUTS, **ALONG_SCALE, **PREDICTION}


SCALE_OUT = GENERATED / "scale"  # the scale profile's outputs, committed: the default report reads its studies
COMMITTED_STUDIES = SCALE_OUT / "studies"  # each scale-profile study's tables and meta.json, as the cache holds them


def own_names() -> set[str]:
    """What ``python -m figures`` may find in its output folder without ``--force``: the files of
    every output and the committed outputs' own folders (the scale profile's, inside the default
    one's, and its studies' tables)."""
    return reproduce_names(ALL) | {SCALE_OUT.name, COMMITTED_STUDIES.name}


def default_out(profile: str) -> Path:
    """Default and scale profiles: committed under figures/generated (the README shows them)."""
    if profile == "default":
        return GENERATED
    return SCALE_OUT if profile == "scale" else results_root() / "figures" / profile


def commit_studies(ctx: Context, names: list[str]) -> list[Path]:
    """Copy each finished study's tables and meta.json from the result cache into
    :data:`COMMITTED_STUDIES` (the scale profile's committed outputs), meta.json last."""
    written = []
    for name in names:
        src, dst = ctx.study_dir(name), COMMITTED_STUDIES / name
        dst.mkdir(parents=True, exist_ok=True)
        (dst / "meta.json").unlink(missing_ok=True)
        for stale in dst.glob("*.csv"):
            stale.unlink()
        for f in sorted(src.glob("*.csv")) + [src / "meta.json"]:
            write_bytes_atomic(dst / f.name, f.read_bytes())
            written.append(dst / f.name)
    return written


def committed_studies(skip: set[str]) -> tuple[dict[str, dict], dict[str, dict]]:
    """The tables and meta.json of every committed scale-profile study not in ``skip`` (what the
    default report's "Along scale" and the hypotheses measured there read: numbers, re-judged by
    the same rules). Sizes are bounded: these are files in the repository, but files nonetheless."""
    tables, metas = {}, {}
    if not COMMITTED_STUDIES.is_dir():
        return tables, metas
    for d in sorted(p for p in COMMITTED_STUDIES.iterdir() if p.is_dir() and p.name not in skip):
        found = read_tables(d)  # None: an unfinished copy (no meta.json)
        if found is not None:
            tables[d.name], metas[d.name] = found, read_json(d / "meta.json", "committed study meta.json")
    return tables, metas


def selected(only: str | None, profile: str = "default") -> list[str]:
    """The output keys of ``--only`` (all when not given) that ``profile`` builds: the scale
    study's (F13) and the prediction study's (F14) only where they run (:data:`figures.outputs.DRAWN_FOR`),
    and nothing else for a profile that has only those studies. An unknown key is a user error."""
    keys = list(ALL) if not only else [k.strip().upper() for k in only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ALL]
    if unknown:
        raise ConfigError(f"unknown output '{unknown[0]}' (choices: {', '.join(ALL)})")
    return [k for k in keys if (k in DRAWN_FOR and profile in DRAWN_FOR[k])
            or (k in OUTPUTS and profile not in STUDY_ONLY)]


# ---- writing ----------------------------------------------------------------------------------

def save_figure(fig, out: Path, key: str, title: str, stamp: dict) -> list[Path]:
    fig.suptitle(f"{key}. {title}", fontsize=10, y=1.0)
    fig.text(0.995, 0.002, stamps.line(stamp), ha="right", va="bottom", fontsize=5, color="0.45")
    fig.tight_layout(rect=(0, 0.02, 1, 0.98))
    meta = json.dumps(stamp)
    paths = [out / f"{key}.png", out / f"{key}.pdf"]
    png, pdf = io.BytesIO(), io.BytesIO()  # drawn in memory, then moved into place atomically
    fig.savefig(png, format="png", dpi=170, metadata={"Description": meta}, bbox_inches="tight")
    fig.savefig(pdf, format="pdf", metadata={"Subject": meta, "Title": f"{key}. {title}", "CreationDate": None},
                bbox_inches="tight")  # no date: regenerating identical results gives identical files
    plt.close(fig)
    write_bytes_atomic(paths[0], png.getvalue())
    write_bytes_atomic(paths[1], pdf.getvalue())
    return paths + [stamps.write_sidecar(p, stamp) for p in paths]


def save_table(df: pd.DataFrame, out: Path, key: str, title: str, stamp: dict) -> list[Path]:
    line = stamps.line(stamp)
    csv, md, tex = out / f"{key}.csv", out / f"{key}.md", out / f"{key}.tex"
    write_text_atomic(csv, df.to_csv(index=False))  # plain: pandas.read_csv reads it; the stamp is the sidecar
    write_text_atomic(md, f"**{key}. {title}**\n\n{df.to_markdown(index=False, floatfmt='.4g')}\n\n_{line}_\n")
    body = df.to_latex(index=False, float_format=lambda v: f"{v:.4g}", caption=f"{title}",
                       label=f"tab:{key.lower()}", longtable=len(df) > 30)
    write_text_atomic(tex, f"% {line}\n% {json.dumps(stamp)}\n{body}")
    return [csv, md, tex] + [stamps.write_sidecar(p, stamp) for p in (csv, md, tex)]


# ---- the stages -------------------------------------------------------------------------------

def run_studies(ctx: Context, names: list[str], bar) -> tuple[dict[str, dict], dict[str, dict]]:
    """The tables and ``meta.json`` of each study, run first unless cached (or ``ctx.force``)."""
    tables: dict[str, dict] = {}
    metas: dict[str, dict] = {}
    for name in names:
        bar.set_postfix_str(f"study {name}")
        # an older layout is upgraded, not rerun; tables computed for another plan are recomputed
        if ctx.force or current(ctx, name) is None or stale(ctx, name):
            study_module(name).run(ctx=ctx)
        tables[name] = current(ctx, name)
        metas[name] = json.loads((ctx.study_dir(name) / "meta.json").read_text())
        bar.update(1)
    return tables, metas


def write_outputs(keys: list[str], tables: dict, metas: dict, profile: str, out: Path, bar) -> list[Path]:
    written = []
    for k in keys:
        o = ALL[k]
        bar.set_postfix_str(k)
        st = stamps.merge([metas[s] for s in o.studies], profile, k)
        obj = o.build(tables)
        written += (save_figure(obj, out, k, o.title, st) if o.kind == "figure"
                    else save_table(obj, out, k, o.title, st))
        bar.update(1)
    return written


def build(args) -> int:
    """Run or reuse the studies, write the outputs of ``args.only`` (default: all, then the report)."""
    t0 = time.time()
    keys = selected(args.only, args.profile)
    if args.jobs < 0:
        raise ConfigError(f"--jobs must be >= 0, got {args.jobs}")
    ctx = Context(args.profile, results_root(args.results), args.jobs, args.force, not args.no_progress,
                  executor=getattr(args, "executor", None) or "local")
    out = Path(args.out) if args.out else default_out(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    needed = list(dict.fromkeys(s for k in keys for s in ALL[k].studies))
    with_report = not args.only
    total = len(needed) + len(keys) + int(with_report)
    with ctx, tqdm(total=total, desc="reproduce", disable=args.no_progress, dynamic_ncols=True) as bar:
        start_executor(ctx)
        tables, metas = run_studies(ctx, needed, bar)
        scale_tables = tables
        if ctx.profile == "default":  # the scale profile's committed studies: "Along scale" and H6-H7
            more, more_metas = committed_studies(set(tables))
            scale_tables = {**tables, **more}
            metas = {**metas, **{k: v for k, v in more_metas.items() if k not in metas}}
        written = write_outputs(keys, tables, metas, ctx.profile, out, bar)
        if with_report:
            bar.set_postfix_str("report")
            written += report.write_report(judge_all(scale_tables, ctx.profile), metas, ctx.profile, out,
                                           along_scale(scale_tables.get(scale_study.NAME)),
                                           prediction_verdicts.design(scale_tables.get(prediction_study.NAME)))
            if ctx.profile in STUDY_ONLY and out.resolve() == SCALE_OUT.resolve():
                written += commit_studies(ctx, needed)
            bar.update(1)
    print(f"{len(written)} files in {out} ({time.time() - t0:.1f} s)")
    if caveat(ctx.profile):
        print(caveat(ctx.profile))
    return 0
