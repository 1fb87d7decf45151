"""The reproduction report: one table of every claim and hypothesis, then the details.

:func:`write_report` writes ``REPORT.md`` and ``claims.csv`` from the findings
(:func:`experiments.verdicts.judge_all`, rendered by :mod:`experiments.verdicts.render`) and the
outputs already drawn (:mod:`figures.outputs`); for the default profile in ``figures/generated``
it also refreshes ``paper/`` and the README's generated sections.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from experiments.plans import STUDY_ONLY, plan
from experiments.verdicts import CLAIMS, Finding, regime
from experiments.verdicts import render
from gfa_theory.train.store import write_text_atomic

from . import stamp as stamps
from .outputs import GENERATED, REPO, figures

RULES_NOTE = ("Several comparisons inside a claim are Holm-adjusted; 'does not change', 'comparable' and "
              "'competitive' are equivalence (TOST) or non-inferiority tests at a declared margin, and a "
              "non-significant difference never supports them; a positive claim without significant evidence "
              "either way is inconclusive, and 'does not hold' needs evidence against it; cluster-robust "
              "intervals use t with G - 1 df (G runs); p-values below 1e-4 print as 'p < 1e-4'.")

PAPER_MAX_PARAMS = 1.2e9  # the largest model of the paper (its abstract)


def scale(profile: str) -> str:
    """What was trained here, next to what the paper trained: parameter and token counts of the
    models this profile builds, and the orders of magnitude between them and the paper's largest."""
    if profile in STUDY_ONLY:
        return (f"Profile `{profile}` runs only the {' and '.join(STUDY_ONLY[profile])} studies: the scale study's "
                f"ladders are described in \"Along scale\" below, the prediction study (H6, H7) trains at the "
                f"default profile's size (`experiments/prediction.py`); every other claim is not measured for "
                f"this profile.")
    p = plan(profile)
    m = p.model
    g, r = regime(profile, "transformer"), regime(profile, "resnet")
    gpt, res = (g.params_min, g.params_max), (r.params_min, r.params_max)
    tokens = p.train.steps * p.train.batch_size * m.block_size
    lo, hi = (math.log10(PAPER_MAX_PARAMS / x) for x in (max(gpt), min(gpt)))
    return (f"Trained here (profile `{profile}`, CPU): character-level Pre-LN Transformers with residual width "
            f"{m.n_embd}, {m.n_head} heads, FFN {m.d_ff}, context {m.block_size}, depths {list(p.depths)} blocks "
            f"({min(gpt):,}-{max(gpt):,} parameters), {p.train.steps} AdamW steps of batch {p.train.batch_size} "
            f"({tokens:,} training tokens per run) on the CPython documentation text; pre-activation ResNets "
            f"(widths {list(p.resnet.widths)}, {min(res):,}-{max(res):,} parameters) for {p.resnet.steps} SGD "
            f"steps on scikit-learn's 8x8 digits; seeds {list(p.seeds)}. The paper trains models up to "
            f"{PAPER_MAX_PARAMS / 1e9:.1f}B parameters on web-scale text (and full-size image data): our "
            f"Transformers are {lo:.1f}-{hi:.1f} orders of magnitude smaller in parameters (and trained on far "
            f"fewer tokens, for minutes), so a claim that fails here may still hold at scale, and one that holds "
            f"here is a small-scale check only.")


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(REPO))
    except ValueError:
        return str(p)


def _drawn(out: Path) -> list:
    """The figures drawn into ``out``, in order."""
    return [o for o in figures() if (out / f"{o.key}.png").is_file()]


def time_table(metas: dict) -> pd.DataFrame:
    """Where the time goes: per study, the wall seconds of its last run (from its ``meta.json``),
    how many runs that call trained and how many it read from the result cache, which executor ran
    its tasks with how many workers, and the total. ``n/a`` where a meta predates these fields."""
    rows = []
    for name in sorted(n for n, m in metas.items() if m):
        m = metas[name]
        ran = m.get("executor", "n/a") + (f" x {m['workers']}" if m.get("workers") else "")
        rows.append({"study": name, "wall seconds (last run)": float(m.get("wall_seconds", math.nan)),
                     "runs trained": m.get("runs_trained"), "runs read from cache": m.get("runs_cached"),
                     "executor x workers": ran})
    df = pd.DataFrame(rows, columns=["study", "wall seconds (last run)", "runs trained", "runs read from cache",
                                     "executor x workers"])
    if df.empty:
        return df
    counts = ["runs trained", "runs read from cache"]
    total = {"study": "total", "wall seconds (last run)": df["wall seconds (last run)"].sum(min_count=1),
             "executor x workers": ""}
    for c in counts:  # a total only when every study recorded its count
        total[c] = int(df[c].sum()) if df[c].notna().all() else None
    df = pd.concat([df, pd.DataFrame([total])], ignore_index=True)
    df["wall seconds (last run)"] = df["wall seconds (last run)"].map(lambda v: "n/a" if pd.isna(v) else f"{v:.1f}")
    for c in counts:
        df[c] = df[c].map(lambda v: "n/a" if pd.isna(v) else str(int(v)))
    return df


def _time_section(metas: dict | None) -> list[str]:
    table = time_table(metas or {})
    if table.empty:
        return []
    note = ("Wall seconds of each study's last run (`meta.json`), and how many of its training runs that call "
            "trained and how many it read from the result cache (a cached run costs only its read-back and "
            "analysis). The total adds the last runs: studies that share cached runs train each run once.")
    return ["## Where the time goes", "", note, "",
            table.to_markdown(index=False, disable_numparse=True), ""]


def report_text(findings: list[Finding], st: dict, profile: str, out: Path, metas: dict | None = None,
                along=None, design: tuple = ()) -> str:
    """REPORT.md: the table of every claim and hypothesis first, then each one's details (folded),
    the scale, the figures and tables drawn into ``out``, the thresholds and where the time goes
    (``metas``: each study's ``meta.json``); ``along``: the scale findings
    (:func:`experiments.verdicts.scale.along_scale`, None: "not measured for this profile"); ``design``:
    the prediction study's exploratory CascadeFormer comparison
    (:func:`experiments.verdicts.prediction.design`, empty where it did not run)."""
    keys = {c.key for c in CLAIMS}
    claims = [f for f in findings if f.key in keys]
    hypotheses = [f for f in findings if f.key not in keys]
    counts = pd.Series([f.verdict.value for f in claims]).value_counts().to_dict()
    lines = ["# Reproduction report", "",
             "Claims C1-C11 of the paper's abstract and hypotheses H1-H7 of this package's mechanism and prediction "
             "studies, each "
             "judged by a declared rule from numbers measured by this repository's code. Verdicts of the claims: "
             + ", ".join(f"{v} {n}" for v, n in counts.items()) + ".", "",
             render.summary_table(findings, along).to_markdown(index=False), "",
             f"_{stamps.line(st)}_", "", "## Scale", "", scale(profile), "",
             "## Claims of the abstract", "", RULES_NOTE, ""]
    for f in claims:
        lines += render.details(f)
    if hypotheses:
        lines += ["## Beyond the paper", "",
                  "Not claims of the paper: what sets the gradient profile (path counts, path gains, stream growth or "
                  "gradient rank), tested by the mechanism study (`experiments/mechanism.py`) under hypotheses and "
                  "margins declared in `experiments/verdicts/` before its results were read. Figures F9-F11. H6-H7: "
                  "whether that profile can be predicted before training, for every norm placement and the ResNets "
                  "(the prediction study, `experiments/prediction.py`, figure F14); it trains at the default "
                  "profile's model size but runs in the `scale` (and `full`) profile, so its numbers come from "
                  "there.", ""]
        for f in hypotheses:
            lines += render.details(f)
        lines += render.design_section(design)
    scale_dir = out / "scale" if along is not None and profile == "default" else None
    lines += render.along_scale_section(along, profile, None if scale_dir is None else {
        "command": "python -m figures --profile scale", "report": "scale/REPORT.md",
        "figure": "scale/F13.png" if (scale_dir / "F13.png").is_file() else None})
    lines += ["## Figures", ""]
    for o in _drawn(out):
        lines += [f"**{o.key}. {o.title}** ([PDF]({o.key}.pdf))", "", f"![{o.key}]({o.key}.png)", ""]
    lines += ["## Tables", "", "LaTeX versions of every table (`T*.tex`) sit next to the figures in "
              f"`{_rel(out)}`.", ""]
    for key in sorted(p.stem for p in out.glob("T*.md")):  # each written by pandas' to_markdown
        lines += [(out / f"{key}.md").read_text(), ""]
    lines += ["## Thresholds", "", "Every threshold and margin, declared once (`experiments/verdicts/toolkit.py`) "
              "before the results were read.", "", render.thresholds_table().to_markdown(index=False), ""]
    lines += _time_section(metas)
    return "\n".join(lines)


def write_report(findings: list[Finding], metas: dict, profile: str, out: Path, along=None,
                 design: tuple = ()) -> list[Path]:
    """Write REPORT.md, claims.csv (the findings as numbers) and claims.tex into ``out``; for the
    default profile's committed outputs also paper/REPORT.md, paper/tables/*.tex and the README's
    generated sections. Returns the paths."""
    st = stamps.merge(metas.values(), profile, "REPORT")
    text = report_text(findings, st, profile, out, metas, along, design)
    target, claims_csv = out / "REPORT.md", out / "claims.csv"
    write_text_atomic(target, text)
    write_text_atomic(claims_csv, render.findings_frame(findings).to_csv(index=False))
    stamps.write_sidecar(claims_csv, st)
    paths = [target, claims_csv]
    if profile == "default" and out.resolve() == GENERATED.resolve():
        paper = REPO / "paper"
        tex_dir = paper / "tables"
        tex_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(paper / "REPORT.md", text.replace("](", "](../figures/generated/"))
        for tex in out.glob("T*.tex"):
            write_text_atomic(tex_dir / tex.name, tex.read_text())
        write_text_atomic(tex_dir / "claims.tex", f"% {stamps.line(st)}\n" + render.latex(
            render.summary_table(findings, along), "Claims and hypotheses: verdicts and primary estimates",
            "tab:claims"))
        paths += [paper / "REPORT.md", tex_dir / "claims.tex", update_readme(findings, out, st, along)]
    return paths


def _between(text: str, name: str, body: str) -> str:
    start, end = f"<!-- BEGIN GENERATED: {name} -->", f"<!-- END GENERATED: {name} -->"
    if start not in text or end not in text:
        return text
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def readme_table(findings: list[Finding], along=None) -> pd.DataFrame:
    """The README's short table: claim, verdict, where it was measured, its verdict at each point of
    the scale ladders (with ``along``), primary estimate and why."""
    t = render.summary_table(findings, along)
    ladders = [c for c in t.columns if c.startswith("along scale")]
    return t[[c for c in ("claim", "in short", "verdict", "measured at", *ladders, "primary estimate [95 % CI]", "why")
              if c in t.columns]]


def update_readme(findings: list[Finding], out: Path, st: dict, along=None) -> Path:
    """Refresh the generated sections of the README (default profile only)."""
    readme = REPO / "README.md"
    body = (f"_{stamps.line(st)}_\n\n" + readme_table(findings, along).to_markdown(index=False)
            + "\n\nEach verdict's numbers, per-arm tables and rule: [paper/REPORT.md](paper/REPORT.md).")
    figs = [f"**{o.key}. {o.title}**\n\n![{o.key}]({_rel(out / f'{o.key}.png')})\n" for o in _drawn(out)]
    text = _between(readme.read_text(), "claims", body)
    text = _between(text, "figures", "\n".join(figs))
    write_text_atomic(readme, text)
    return readme
