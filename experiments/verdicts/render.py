"""The one renderer: findings to words and tables (Markdown, LaTeX, the README table, a study's
console takeaway). Rules never format; this module never judges.

* :func:`takeaway` — three lines: predicted, measured, verdict; :func:`study_takeaways` — those of
  every rule reading one study (``python -m experiments NAME`` prints them before its table);
* :func:`summary_table` — one row per claim / hypothesis: short claim, verdict, primary estimate
  [CI], n, margin, figure, why (the report's first screen and the README);
* :func:`details` — a claim's folded details: the paper's words, every reported number as a
  table, per-arm tables, the rule;
* :func:`design_section` — the prediction study's exploratory CascadeFormer comparison;
* :func:`thresholds_table` — every threshold with its meaning;
* :func:`findings_frame` — the findings as numbers (``claims.csv``);
* :func:`along_scale_section` — the report's "Along scale" section from the scale findings
  (:func:`experiments.verdicts.scale.along_scale`): regime per claim and ladder, trends, per-point verdicts.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gfa_theory.instrument.stats import format_interval, format_p

from . import BY_KEY, Rule, for_study, judge
from .scale import PRIMARY, TREND_RULE
from .toolkit import THRESHOLDS, Estimate, Finding, Regime


def interval(e: Estimate) -> str:
    """``estimate [ci_low, ci_high]``; ``all n units: m`` without spread; the estimate alone
    without an interval."""
    if e is None:
        return ""
    return format_interval(e.estimate, e.ci_low, e.ci_high, e.fmt, missing="n/a", n=e.n or None, unit=e.unit)


def _n(e: Estimate | None) -> str:
    return f"{e.n} {e.unit}" if e is not None and e.n else ""


def _margin(f: Finding) -> str:
    return "" if not np.isfinite(f.margin) else f"{f.margin:.3g}"


def regime_text(r: Regime | None) -> str:
    """``0.2-0.9M params, 1.1-3.4 tokens/param`` (the params alone for images)."""
    if r is None:
        return ""
    def m(x):  # noqa: E306
        return f"{x / 1e6:.2g}M" if x >= 1e5 else f"{x / 1e3:.3g}k"
    size = m(r.params_min) if r.params_min == r.params_max else f"{m(r.params_min)}-{m(r.params_max)}"
    if not np.isfinite(r.tokens_per_param_min):
        return f"{size} params"
    lo, hi = r.tokens_per_param_min, r.tokens_per_param_max
    tpp = f"{lo:.2g}" if f"{lo:.2g}" == f"{hi:.2g}" else f"{lo:.2g}-{hi:.2g}"
    return f"{size} params, {tpp} tokens/param"


def takeaway(finding: Finding, rule: Rule | None = None) -> str:
    """Three lines from a finding: what was predicted, what was measured, the verdict and why."""
    rule = rule or BY_KEY.get(finding.key)
    predicted = rule.statement if rule is not None else finding.claim
    e = finding.primary
    measured = (f"{e.label} = {interval(e)}" + (f" (n = {_n(e)}" + (f"; margin {_margin(finding)}"
                                                                   if _margin(finding) else "") + ")" if e.n else "")
                if e is not None else "nothing (see why)")
    where = f" ({regime_text(finding.regime)})" if finding.regime is not None else ""
    return "\n".join([f"{finding.key} predicted: {predicted}", f"{finding.key} measured: {measured}{where}",
                      f"{finding.key} verdict: {finding.verdict.value}: {finding.why}"])


def study_takeaways(name: str, tables: dict, profile: str | None = None) -> str:
    """The takeaway of every rule that reads study ``name`` (``tables``: ``{study: {table:
    frame}}``), blank-line separated; empty for a study no rule reads."""
    return "\n\n".join(takeaway(judge(r, tables, profile), r) for r in for_study(name))


def _ladder_verdicts(axis: str, pts) -> str:
    """A claim's verdict at each point of one ladder, in ladder order ("holds · mixed · ...")."""
    return " · ".join(str(p.finding.verdict) for p in pts) if pts else ""


def ladder_header(axis: str, along) -> str:
    """The column name of one ladder: its points, e.g. "at 1 / 3 / 10 / 20 tokens/param"."""
    xs = sorted({p.axis_value for f in along for p in f.points.get(axis, ())})
    if axis == "tokens":
        return "along scale: at " + " / ".join(f"{x:.2g}" for x in xs) + " tokens/param"
    return "along scale: at " + " / ".join(f"{x / 1e6:.2g}" for x in xs) + " M params"


def summary_table(findings: list[Finding], along=None) -> pd.DataFrame:
    """One row per finding: the short claim, verdict, where it was measured (its regime), primary
    estimate [CI], n, margin, figure and why; with ``along`` (the scale findings,
    :func:`experiments.verdicts.scale.along_scale`) also the claim's verdict at every point of each
    ladder (blank for a claim the scale study does not measure)."""
    by = {f.key: f for f in along or ()}
    rows = []
    for f in findings:
        rule = BY_KEY[f.key]
        e = f.primary
        row = {"claim": f.key, "in short": f.claim, "verdict": f"**{f.verdict.value}**",
               "measured at": regime_text(f.regime),
               "primary estimate [95 % CI]": (f"{e.label}: {interval(e)}" if e is not None else ""),
               "n": _n(e), "margin": _margin(f), "figure": rule.evidence, "why": f.why}
        if by:
            for axis in ("tokens", "size"):
                sf = by.get(f.key)
                row[ladder_header(axis, along)] = _ladder_verdicts(axis, sf.points[axis]) if sf else ""
        rows.append(row)
    out = pd.DataFrame(rows)
    # no finding here says where it was measured (e.g. the hypotheses alone): no empty column
    return out.drop(columns="measured at") if len(out) and not out["measured at"].any() else out


def _p(e: Estimate) -> str:
    return "" if not np.isfinite(e.p) else f"{e.p_name} {format_p(e.p).removeprefix('p ')}"


def estimates_table(estimates: tuple[Estimate, ...]) -> pd.DataFrame:
    return pd.DataFrame([{"quantity": e.label, "estimate [95 % CI]": interval(e), "n": _n(e), "test": _p(e),
                          "note": e.note} for e in estimates])


def _arms_md(arms: pd.DataFrame) -> str:
    shown = arms[[c for c in arms.columns if not c.startswith("_")]]
    return shown.to_markdown(index=False, floatfmt=".4g")


def details(f: Finding, rule: Rule | None = None) -> list[str]:
    """A finding's folded details (Markdown lines): the statement, regime, every number, per-arm
    table and the rule."""
    rule = rule or BY_KEY[f.key]
    shown = tuple(e for e in (f.primary, *f.secondary) if e is not None)
    lines = ["<details>", f"<summary><b>{f.key}. {rule.short}</b>: {f.verdict.value}</summary>", "",
             f"_{rule.statement}_", ""]
    if f.regime is not None:
        lines += [f"Measured on {regime_text(f.regime)} ({f.regime.family}).", ""]
    if shown:
        lines += [estimates_table(shown).to_markdown(index=False), ""]
    if f.arms is not None and not f.arms.empty:
        lines += [_arms_md(f.arms), ""]
    lines += [f"Rule: {rule.rule}.", "", "</details>", ""]
    return lines


def design_section(estimates: tuple[Estimate, ...]) -> list[str]:
    """The prediction study's exploratory design comparison (Markdown lines; none where it did not run)."""
    if not estimates:
        return []
    return ["### From prediction to design (exploratory)", "",
            "A CascadeFormer arm whose widths follow the profile of A predicted before training (full product "
            "with norm gains at initialization, `gfa taper --predict`), matched to the primary fan-in taper's "
            "parameter budget, against that taper and the narrow uniform model (C8's setting, paired by seed). "
            "Exploratory: no verdict beyond the difference and its interval.", "",
            estimates_table(estimates).to_markdown(index=False), ""]


def thresholds_table() -> pd.DataFrame:
    return pd.DataFrame([{"threshold": name, "value": f"{value:g}", "meaning": means}
                         for name, value, means in THRESHOLDS.rows()])


def findings_frame(findings: list[Finding]) -> pd.DataFrame:
    """The findings as numbers, one row each (``claims.csv``)."""
    rows = []
    for f in findings:
        rule, e, r = BY_KEY[f.key], f.primary, f.regime
        rows.append({"claim": f.key, "short": f.claim, "paper": rule.statement, "verdict": f.verdict.value,
                     "quantity": e.label if e else "", "estimate": e.estimate if e else math.nan,
                     "ci_low": e.ci_low if e else math.nan, "ci_high": e.ci_high if e else math.nan,
                     "n": e.n if e else 0, "unit": e.unit if e else "", "p": e.p if e else math.nan,
                     "margin": f.margin, "why": f.why, "evidence": rule.evidence,
                     "params_min": r.params_min if r else math.nan, "params_max": r.params_max if r else math.nan,
                     "tokens_per_param_min": r.tokens_per_param_min if r else math.nan,
                     "tokens_per_param_max": r.tokens_per_param_max if r else math.nan, "rule": rule.rule})
    return pd.DataFrame(rows)


def latex(df: pd.DataFrame, caption: str, label: str) -> str:
    """A table of this module as LaTeX (bold markers dropped)."""
    plain = df.replace(r"\*\*(.*)\*\*", r"\1", regex=True)
    return plain.to_latex(index=False, caption=caption, label=label, longtable=len(plain) > 30)


# ---- along scale (study 8) -------------------------------------------------------------------------

AXIS_UNITS = {"tokens": "tokens/param", "size": "parameters"}


def _x(axis: str, x: float) -> str:
    return f"{x:.3g} tokens/param" if axis == "tokens" else f"{x:,.0f} parameters"


def regime_statement(r) -> str:
    """A claim's regime along one ladder in words, e.g. "holds up to 3 tokens/param; inconclusive
    from 10 tokens/param on" (from :class:`~experiments.verdicts.scale.ScaleRegime`, never parsed)."""
    if r.kind == "empty":
        return "no ladder points"
    if r.kind == "throughout":
        return f"{r.below} at every point ({_x(r.axis, r.lowest)} to {_x(r.axis, r.highest)})"
    if r.kind == "boundary":
        return f"{r.below} up to {_x(r.axis, r.last_below)}; {r.above} from {_x(r.axis, r.first_above)} on"
    return "no single boundary: " + ", ".join(f"{v} at {_x(r.axis, x)}" for x, v in r.points)


def along_scale_table(findings) -> pd.DataFrame:
    """One row per claim and ladder: the regime, the primary statistic's trend and its slope [CI]."""
    rows = []
    for f in findings:
        for axis in ("tokens", "size"):
            prim = [t for t in f.trends if t.axis == axis and t.statistic == _primary(f.key)]
            rows.append({"claim": f.key, "ladder": AXIS_UNITS[axis], "regime": regime_statement(f.regimes[axis]),
                         "trend": str(f.movement(axis)),
                         "slope per decade [95% CI]": interval(prim[0].slope) if prim else "n/a",
                         "margin": f"+-{prim[0].margin:g}" if prim else ""})
    return pd.DataFrame(rows)


def _primary(key: str) -> str:
    return PRIMARY[key]


def trends_table(findings) -> pd.DataFrame:
    """Every statistic's trend on both ladders."""
    return pd.DataFrame([{"claim": f.key, "statistic": t.slope.label, "ladder": AXIS_UNITS[t.axis],
                          "slope [95% CI]": interval(t.slope), "Holm p": format_p(t.slope.p),
                          "margin": f"+-{t.margin:g}", "trend": str(t.outcome)} for f in findings for t in f.trends])


def point_table(findings) -> pd.DataFrame:
    """Every claim's verdict at every ladder point (the claim rules unchanged)."""
    return pd.DataFrame([{"claim": f.key, "ladder": AXIS_UNITS[axis], "point": p.point,
                          "at": _x(axis, p.axis_value), "verdict": str(p.finding.verdict),
                          "primary": interval(p.finding.primary), "why": p.finding.why}
                         for f in findings for axis, pts in f.points.items() for p in pts])


def headline(f) -> str:
    """A claim's regime along both ladders in one sentence, e.g. "C8 along tokens/param: holds up to
    1 tokens/param; inconclusive from 3 tokens/param on (primary statistic fades)"."""
    return "; ".join(f"{AXIS_UNITS[a]}: {regime_statement(f.regimes[a])} (trend {f.movement(a)})"
                     for a in ("tokens", "size"))


def along_scale_section(findings, profile: str, source: dict | None = None) -> list[str]:
    """The report's "Along scale" section (Markdown lines); "not measured" without the study.
    ``source``: where a report of another profile read them (``command``, ``report``, ``figure``)."""
    lines = ["## Along scale", ""]
    if findings is None:
        return lines + [f"Not measured for this profile (`{profile}`): the scale study runs with "
                        f"`python -m figures --profile scale` (or `full`).", ""]
    if source is not None:
        lines += [f"Measured by the `scale` profile (`{source['command']}`), whose outputs are committed: its "
                  f"report is [{source['report']}]({source['report']}). The claim rules "
                  f"re-judge its committed tables here.", ""]
    lines += ["Each claim rule, unchanged, at every ladder point; each statistic's slope per decade of tokens/param "
              "and of parameters (t-interval over seeds). Figure F13 draws the statistics.", ""]
    lines += [f"- **{f.key}**{' (its primary part: CascadeFlow vs last-k, no healing)' if f.key == 'C9' else ''} "
              f"along {headline(f)}" for f in findings] + [""]
    edge = findings[0].lr_at_edge if findings else ()
    if edge:
        lines += ["Caveat: the tuned learning rate sits at the edge of the sweep for "
                  + ", ".join(f"{arm} at width {w}, {t:g} tokens/param ({lr:g})" for w, t, arm, lr in edge)
                  + "; a rate beyond the sweep may train these arms better.", ""]
    if source is not None and source.get("figure"):
        lines += [f"![F13]({source['figure']})", ""]
    lines += [along_scale_table(findings).to_markdown(index=False), "",
              "<details><summary>Verdict at every point, and every trend</summary>", "",
              point_table(findings).to_markdown(index=False), "", trends_table(findings).to_markdown(index=False),
              "", f"Rule: {TREND_RULE}.", "", "</details>", ""]
    return lines
