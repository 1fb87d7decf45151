"""Claim C8: CascadeFormer (study 5, :mod:`experiments.cascadeformer`). The per-arm tests here are
the ones table T1 prints (it reads :attr:`Finding.arms`, never recomputes them)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gfa_theory.instrument import stats

from .. import cascadeformer as cf
from .toolkit import (FAILS, HOLDS, INCONCLUSIVE, MIXED, THRESHOLDS as T, Estimate, Finding, Regime, undefined)

PPL_MARGIN = math.log1p(T.ppl_margin_pct / 100)  # the perplexity margin as a loss (log-perplexity) gap
GAIN_MARGIN = math.log1p(T.taper_gain_margin_pct / 100)

C8_RULE = (f"One primary arm, declared in code before the results ({cf.PRIMARY}: width follows the gradient fan-in), "
           f"and every other arm matched to its parameter budget. (1) Comparable: the primary's paired (by seed) loss "
           f"gap to the full uniform model is below log(1 + {T.ppl_margin_pct:g} %) by the upper one-sided test of "
           f"a TOST at +-{T.ppl_margin_pct:g} % perplexity. (2) Decisive control: the primary beats the narrow "
           f"uniform model of the same budget (same depth, uniformly smaller heads and FFN) by more than "
           f"{T.taper_gain_margin_pct:g} % perplexity (one-sided paired t). (3) Speed vs full uniform, inference: "
           f"a ratio counts only if its per-repeat IQR lies beyond the A/A control's IQR (a copy of the uniform model "
           f"timed interleaved) by >= {T.aa_margin:g} in the faster direction; the paper's point is median latency "
           f"ratio <= {T.paper_latency_ratio:.3f} and throughput ratio >= {T.paper_throughput_ratio:.3f}. "
           f"(1)-(3) are one intersection-union test (each at alpha, no adjustment). Holds if (1), (2), both speed "
           f"ratios count and the paper's point is reached; mixed if (1) and some speed ratio counts but (2) or the "
           f"paper's point is not shown (a narrow model as good means the saving is explained by size); does not hold "
           f"if the primary is worse than uniform beyond the margin, or significantly worse than the narrow model, or "
           f"comparable with no speed ratio beyond the A/A band; inconclusive otherwise or if a statistic is undefined. "
           f"The other arms (linear, inverse = widening with depth, measured = widths from a run's accumulated "
           f"gradients, ...) are exploratory: their tests against the narrow and the full uniform are Holm-adjusted "
           f"and reported, not counted; so is the token sweep (the same arms trained longer). Power as in C6")
TESTS = ("p_comparable", "p_better", "p_worse", "p_equiv", "latency_counts", "throughput_counts")
# what the report's per-arm table shows (T1 prints every column)
SHOWN = ("label", "role", "steps", "n_seeds", "params_ratio", "tokens_per_param", "ppl_gap_pct", "ppl_gap_pct_ci_low",
         "ppl_gap_pct_ci_high", "ppl_gap_narrow_pct", "latency_ratio", "throughput_ratio", *TESTS)
NEEDED = ("loss_gap", "loss_gap_ci_low", "loss_gap_ci_high", "loss_gap_narrow", "loss_gap_narrow_ci_low",
          "loss_gap_narrow_ci_high", "latency_ratio", "throughput_ratio", "latency_ratio_q25",
          "latency_ratio_q75", "throughput_ratio_q25", "throughput_ratio_q75")


def gap(r, suffix: str = "") -> pd.Series:
    """An arm's paired loss gap (to the full uniform, or ``_narrow``) as a summary-shaped row."""
    return pd.Series({"estimate": r[f"loss_gap{suffix}"], "se": r.get(f"loss_gap{suffix}_se", np.nan),
                      "df": r.get(f"loss_gap{suffix}_df", np.nan), "ci_low": r[f"loss_gap{suffix}_ci_low"],
                      "ci_high": r[f"loss_gap{suffix}_ci_high"], "p": r.get(f"loss_gap{suffix}_p", np.nan),
                      "n": r.get(f"loss_gap{suffix}_n", r.get("n_seeds", np.nan))})


def _tost(r, margin: float, centre: float = 0.0) -> dict:
    return stats.tost(float(r["estimate"]) - centre, float(r["se"]), float(r["df"]), margin)


def has_paper_speedup(row) -> bool:
    """Median latency ratio <= the paper's and median throughput ratio >= the paper's."""
    return bool(np.isfinite([row["latency_ratio"], row["throughput_ratio"]]).all()
                and row["latency_ratio"] <= T.paper_latency_ratio
                and row["throughput_ratio"] >= T.paper_throughput_ratio)


def beyond_aa(row, mode: str) -> bool:
    """The ratio of ``mode`` counts as a speedup: its IQR lies beyond the A/A control's IQR by at
    least ``aa_margin`` in the faster direction (below for latency, above for throughput). Without
    an A/A band the IQR must clear 1 by the margin."""
    q25, q75 = row[f"{mode}_ratio_q25"], row[f"{mode}_ratio_q75"]
    a25, a75 = row.get(f"aa_{mode}_ratio_q25", 1.0), row.get(f"aa_{mode}_ratio_q75", 1.0)
    if not np.isfinite([q25, q75, a25, a75]).all():
        return False
    if mode.endswith("latency"):
        return bool(q75 <= a25 - T.aa_margin)
    return bool(q25 >= a75 + T.aa_margin)


def _by_length(summary: pd.DataFrame):
    roles = summary["role"] if "role" in summary else pd.Series("exploratory", index=summary.index)
    steps = summary["steps"] if "steps" in summary else pd.Series(0, index=summary.index)
    for _, idx in summary.groupby(steps).groups.items():
        for which in ("primary", "exploratory"):
            yield which, [i for i in idx if roles[i] == which]


def arm_tests(summary: pd.DataFrame) -> pd.DataFrame:
    """Per arm: non-inferiority p vs the full uniform model (``p_comparable``), one-sided p that it
    beats the narrow uniform model by the gain margin (``p_better``), that it is worse
    (``p_worse``), TOST p of equivalence to narrow (``p_equiv``); the primary's raw (its one
    declared test), the exploratory arms Holm-adjusted within each length; NaN for the others.
    And whether each speed ratio counts beyond the A/A band."""
    cols = ("p_comparable", "p_better", "p_worse", "p_equiv")
    out = pd.DataFrame(np.nan, index=summary.index, columns=cols)
    for which, rows in _by_length(summary):
        if not rows:
            continue
        full = [gap(summary.loc[i]) for i in rows]
        g = [gap(summary.loc[i], "_narrow") for i in rows]
        ps = {"p_comparable": [_tost(r, PPL_MARGIN)["p_upper"] for r in full],
              "p_better": [_tost(r, GAIN_MARGIN, centre=-2 * GAIN_MARGIN)["p_upper"] if GAIN_MARGIN else
                           _tost(r, 0.0)["p_upper"] for r in g],  # H0: gap >= -gain margin
              "p_worse": [_tost(r, 0.0)["p_lower"] for r in g],  # H0: gap <= 0
              "p_equiv": [_tost(r, PPL_MARGIN)["p"] for r in g]}
        for col, p in ps.items():
            out.loc[rows, col] = stats.holm(p) if which == "exploratory" else p
    for mode in ("latency", "throughput"):
        out[f"{mode}_counts"] = [beyond_aa(r, mode) for _, r in summary.iterrows()]
    return out


def _ppl(r, suffix: str, label: str) -> Estimate:
    return Estimate(label, r[f"ppl_gap{suffix}_pct"], r[f"ppl_gap{suffix}_pct_ci_low"],
                    r[f"ppl_gap{suffix}_pct_ci_high"], int(r.get(f"loss_gap{suffix}_n", r["n_seeds"])), unit="seeds",
                    fmt="+.2f")


def c8(summary: pd.DataFrame) -> Finding:
    """C8 from the CascadeFormer study's per-arm summary (:data:`C8_RULE`)."""
    s = summary.reset_index(drop=True)
    if "role" not in s:
        return undefined("the summary has no primary arm (an old study layout: rerun the study)")
    main_steps = s.loc[s["role"] == "reference", "steps"].min() if (s["role"] == "reference").any() else np.nan
    s = s.join(arm_tests(s))
    main = s[s["steps"] == main_steps]
    prim = main[main["role"] == "primary"]
    arms = s[[c for c in SHOWN if c in s]]
    if prim.empty or not np.isfinite(prim[list(NEEDED)].to_numpy(float)).all() \
            or not np.isfinite(prim[["p_comparable", "p_better", "p_worse"]].to_numpy(float)).all():
        return Finding(INCONCLUSIVE, why="the primary arm has no defined loss gaps or timings (2 seeds needed)",
                       arms=arms)
    r = prim.iloc[0]
    a = T.alpha
    comparable = r["p_comparable"] < a
    worse_uniform = r["loss_gap_ci_low"] > PPL_MARGIN
    beats_narrow, worse_narrow = r["p_better"] < a, r["p_worse"] < a
    counts = [bool(r["latency_counts"]), bool(r["throughput_counts"])]
    paper = has_paper_speedup(r)
    primary = _ppl(r, "", f"{r['label']}: perplexity change vs full uniform (%)")
    primary = Estimate(**{**primary.__dict__, "p": r["p_comparable"], "p_name": "non-inferiority p"})
    narrow = _ppl(r, "_narrow", f"{r['label']}: perplexity change vs narrow uniform (%)")
    narrow = Estimate(**{**narrow.__dict__, "p": r["p_better"], "p_name": "one-sided p (better)"})
    speed = tuple(Estimate(f"{r['label']}: {name} ratio vs full uniform (median [IQR])", r[f"{mode}_ratio"],
                           r[f"{mode}_ratio_q25"], r[f"{mode}_ratio_q75"], unit="repeats",
                           note="counts" if beyond_aa(r, mode) else "within the A/A band")
                  for mode, name in (("latency", "latency (batch 1)"), ("throughput", "throughput")))
    size = main.loc[main["role"] == "reference", "params"] if "params" in main else pd.Series(dtype=float)
    where = Regime("transformer", int(r["params"]), int(size.iloc[0]) if len(size) else int(r["params"]),
                   float(r["tokens_per_param"]), float(r["tokens_per_param"])) if "params" in r else None
    found = {"primary": primary, "margin": T.ppl_margin_pct, "secondary": (narrow, *speed), "arms": arms,
             "regime": where}
    lat, thr = r["latency_ratio"], r["throughput_ratio"]
    if comparable and beats_narrow and all(counts) and paper:
        return Finding(HOLDS, why=f"comparable ({r['ppl_gap_pct']:+.2f} %), better than narrow, latency x{lat:.3f}, "
                                  f"throughput x{thr:.3f}", **found)
    if worse_uniform or worse_narrow or (comparable and not any(counts)):
        why = ("worse than uniform beyond the margin" if worse_uniform else
               "worse than the narrow uniform model" if worse_narrow else "no speed ratio beyond the A/A band")
        return Finding(FAILS, why=why, **found)
    if comparable and any(counts):
        why = ("comparable and faster, but not shown better than narrow: size explains the saving"
               if not beats_narrow else f"comparable and faster, short of the paper's point (x{lat:.3f}, x{thr:.3f})")
        return Finding(MIXED, why=why, **found)
    return Finding(INCONCLUSIVE, why=f"not shown comparable: {r['ppl_gap_pct']:+.2f} % perplexity", **found)
