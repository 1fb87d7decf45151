"""Verdicts along scale (study 8, :mod:`experiments.scale`): the claim rules run unchanged at every
ladder point, one declared trend test per statistic, and the regime each claim's verdict holds in.

* :func:`point_verdicts`: C8 (:func:`.cascadeformer.c8`), C2 (:func:`.fanin.c2`), C5's rule on
  the Transformer family (:func:`.importance.association` + :func:`.importance.judge_association`)
  and C9's primary part (:func:`.pruning.c9_vs_depth_order`: CascadeFlow vs last-k, no healing)
  on each point's own tables.
* :func:`trend`: :data:`TREND_RULE` on one slope row of the study's summary.
* :func:`regime_of`: where along a ladder a claim's per-point verdict holds (one change point, or
  the same verdict throughout, or no single boundary), computed from the per-point verdicts.
* :func:`along_scale`: one :class:`ScaleFinding` per claim; :mod:`.render` writes it as prose.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gfa_theory.instrument import stats

from .. import scale as sc
from ..study_io import flags
from . import cascadeformer, fanin, importance, pruning
from .toolkit import THRESHOLDS as T, Estimate, Finding, Verdict, defined, significant, tost, undefined


class Trend(str, enum.Enum):
    """How a statistic moves along a ladder, relative to the claim's direction."""

    STRENGTHENS = "strengthens"
    STEADY = "holds steady"
    FADES = "fades"
    INCONCLUSIVE = "inconclusive"

    def __str__(self) -> str:
        return self.value


# each statistic's steady margin (per decade of the axis), declared once in THRESHOLDS
MARGINS = {"c8_gap_narrow_pct": T.trend_margin_pct, "c8_gap_full_pct": T.trend_margin_pct,
           "c2_rho": T.trend_margin_rho, "c5_rho_no_first": T.trend_margin_rho,
           "c2_exponent": T.trend_margin_exponent, "c2_exponent_no_first": T.trend_margin_exponent,
           "c9_gap_last_mean": T.trend_margin_loss}
# the statistic whose trend says whether a claim strengthens or fades
PRIMARY = {"C8": "c8_gap_narrow_pct", "C2": "c2_rho", "C5": "c5_rho_no_first", "C9": "c9_gap_last_mean"}
CLAIMS = tuple(PRIMARY)

TREND_RULE = (f"Per statistic and ladder: one OLS slope of the per-seed statistic on log10 tokens/param (or log10 "
              f"parameters) per seed, their mean with a t-interval over seeds (df = seeds - 1). Holds steady if a "
              f"TOST puts the slope within +-margin per decade (C8 gaps {T.trend_margin_pct:g} %, correlations "
              f"{T.trend_margin_rho:g}, exponents {T.trend_margin_exponent:g}, the C9 loss gap "
              f"{T.trend_margin_loss:g} nats); else strengthens (fades) if the two-sided t-test, Holm-adjusted over the statistics of one claim and ladder, is significant in (against) "
              f"the claim's direction (more negative gap for C8 and C9, larger rho or exponent for C2 and C5); else "
              f"inconclusive. A claim's regime is read from its per-point verdicts (the claim rules unchanged)")


@dataclass(frozen=True)
class TrendFinding:
    statistic: str
    axis: str  # "tokens" or "size"
    outcome: Trend
    slope: Estimate
    margin: float


@dataclass(frozen=True)
class PointVerdict:
    point: str
    axis_value: float  # tokens/param on the tokens ladder, parameters on the size ladder
    finding: Finding


@dataclass(frozen=True)
class ScaleRegime:
    """Where along one ladder a verdict holds. ``kind``: ``throughout`` (one verdict at every point),
    ``boundary`` (``below`` up to ``last_below``, ``above`` from ``first_above`` on), ``varies``
    (no single boundary) or ``empty``."""

    axis: str
    kind: str
    below: Verdict | None = None
    above: Verdict | None = None
    last_below: float = float("nan")
    first_above: float = float("nan")
    lowest: float = float("nan")
    highest: float = float("nan")
    points: tuple[tuple[float, Verdict], ...] = ()


@dataclass(frozen=True)
class ScaleFinding:
    """One claim along scale: per-point verdicts and regime per ladder, and every statistic's trend."""

    key: str
    points: dict  # axis -> tuple[PointVerdict, ...] (ordered by the axis)
    regimes: dict  # axis -> ScaleRegime
    trends: tuple[TrendFinding, ...]
    # (width, tokens/param, arm, lr) of every tuned rate at the edge of the sweep (the best rate may lie beyond it)
    lr_at_edge: tuple[tuple[int, float, str, float], ...] = ()

    def movement(self, axis: str) -> Trend:
        """The trend of the claim's primary statistic along ``axis``."""
        for t in self.trends:
            if t.statistic == PRIMARY[self.key] and t.axis == axis:
                return t.outcome
        return Trend.INCONCLUSIVE


# ---- the claim rules at one point ----------------------------------------------------------------

def _c5_transformer(summary: pd.DataFrame) -> Finding:
    rows, shown = importance.association(summary, "transformer")
    if not defined(*rows):
        return undefined(primary=shown[0], secondary=tuple(shown[1:]))
    verdict, _, why = importance.judge_association(rows, [f"transformer {t}" for t in importance.TESTED])
    return Finding(verdict, shown[0], why=why, secondary=tuple(shown[1:]))


def _point(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    return frame[frame["point"] == key].reset_index(drop=True)


JUDGES = {"C8": ("c8", cascadeformer.c8), "C2": ("fanin", fanin.c2), "C5": ("importance", _c5_transformer),
          "C9": ("depth_order", pruning.c9_vs_depth_order)}


def point_verdicts(tables: dict, claim: str) -> dict:
    """``claim``'s rule on every point's own table, per ladder (ordered by the ladder's axis)."""
    name, rule = JUDGES[claim]
    frame, means = tables[name], tables["point_means"]
    info = means.drop_duplicates("setting").set_index("setting")
    out = {}
    for axis, on, x in (("tokens", "on_tokens", "tokens_per_param"), ("size", "on_size", "params")):
        pts = info[flags(info[on])].sort_values(x)
        out[axis] = tuple(PointVerdict(k, float(r[x]), rule(_point(frame, k))) for k, r in pts.iterrows())
    return out


def regime_of(axis: str, pts: tuple[PointVerdict, ...]) -> ScaleRegime:
    """Where the verdict holds along one ladder, from its per-point verdicts (ordered)."""
    seq = tuple((p.axis_value, p.finding.verdict) for p in pts)
    if not seq:
        return ScaleRegime(axis, "empty")
    xs, vs = [x for x, _ in seq], [v for _, v in seq]
    common = {"lowest": xs[0], "highest": xs[-1], "points": seq}
    if len(set(vs)) == 1:
        return ScaleRegime(axis, "throughout", below=vs[0], above=vs[0], **common)
    changes = [i for i in range(1, len(vs)) if vs[i] != vs[i - 1]]
    if len(changes) == 1:
        i = changes[0]
        return ScaleRegime(axis, "boundary", below=vs[0], above=vs[-1], last_below=xs[i - 1], first_above=xs[i],
                           **common)
    return ScaleRegime(axis, "varies", **common)


# ---- trends --------------------------------------------------------------------------------------

def trend(row, sign: float, margin: float, p_adjusted: float | None = None) -> Trend:
    """:data:`TREND_RULE` on one slope row (``estimate``, ``se``, ``df``, ``p``); ``p_adjusted``:
    its Holm-adjusted p (default: the row's own)."""
    est, se, df = float(row["estimate"]), float(row["se"]), float(row["df"])
    if not (np.isfinite(est) and np.isfinite(se) and np.isfinite(df) and df > 0):
        return Trend.INCONCLUSIVE
    if tost(row, margin)["p"] < T.alpha:
        return Trend.STEADY
    p = float(row["p"]) if p_adjusted is None else p_adjusted
    if significant(np.array([p]))[0]:
        return Trend.STRENGTHENS if sign * est > 0 else Trend.FADES
    return Trend.INCONCLUSIVE


def trend_findings(summary: pd.DataFrame, claim: str) -> tuple[TrendFinding, ...]:
    """Every statistic of ``claim``, on both ladders (Holm over the claim's statistics per ladder)."""
    out = []
    stats_of = [s for s, (c, _, _) in sc.STATISTICS.items() if c == claim]
    for axis, predictor in sc.AXES.items():
        rows = []
        for s in stats_of:
            hit = summary[(summary["quantity"] == s) & (summary["predictor"] == predictor)]
            rows.append(hit.iloc[0] if len(hit) else None)
        ps = [float(r["p"]) if r is not None else np.nan for r in rows]
        adj = stats.holm(ps) if any(np.isfinite(ps)) else ps
        for s, r, pa in zip(stats_of, rows, adj):
            if r is None:
                continue
            sign = sc.STATISTICS[s][1]
            est = Estimate(f"{sc.STATISTICS[s][2]}: slope per decade of {axis}", float(r["estimate"]),
                           float(r["ci_low"]), float(r["ci_high"]), int(r["n"]) if np.isfinite(r["n"]) else 0,
                           float(pa), "Holm p", "seeds", ".3f")
            out.append(TrendFinding(s, axis, trend(r, sign, MARGINS[s], float(pa)), est, MARGINS[s]))
    return tuple(out)


def along_scale(tables: dict | None) -> list[ScaleFinding] | None:
    """One finding per claim (:data:`CLAIMS`) from the scale study's tables; None when it has not run."""
    if tables is None:
        return None
    out = []
    edge = lr_at_edge(tables.get("tuning"))
    for claim in CLAIMS:
        pts = point_verdicts(tables, claim)
        out.append(ScaleFinding(claim, pts, {a: regime_of(a, p) for a, p in pts.items()},
                                trend_findings(tables["summary"], claim), edge))
    return out


def lr_at_edge(tuning: pd.DataFrame | None) -> tuple[tuple[int, float, str, float], ...]:
    """The tuned rates that sit at the sweep's lowest or highest value (``at_sweep_edge``)."""
    if tuning is None or "at_sweep_edge" not in tuning:
        return ()
    d = tuning[flags(tuning["at_sweep_edge"])]
    return tuple((int(r.tune_width), float(r.tune_point), str(r.arm), float(r.lr)) for r in d.itertuples())


__all__ = ["Trend", "TrendFinding", "ScaleRegime", "ScaleFinding", "TREND_RULE", "trend", "regime_of",
           "point_verdicts", "trend_findings", "along_scale"]
