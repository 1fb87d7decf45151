"""Claims C9-C11: CascadeFlow Pruning (study 6, :mod:`experiments.pruning`), from the study's
``comparisons`` rows (CascadeFlow minus each method) and its ``depth_order`` table."""
from __future__ import annotations

import numpy as np
import pandas as pd

from gfa_theory.instrument import stats

from .. import pruning as pr
from .toolkit import (FAILS, HOLDS, INCONCLUSIVE, MIXED, THRESHOLDS as T, Estimate, Finding, Verdict, exact_p,
                      finite_ci, significant, superiority, tost, tost_power, undefined)

# C9: the primary baseline is last-k (depth order: the ranking fan-in itself predicts, and A decays
# with depth), judged only where CascadeFlow removes other blocks than it; the other heuristics are
# secondary comparisons; random is the chance floor and the greedy ablation oracle the ceiling, both
# reported, not counted
C9_PRIMARY = pr.DEPTH_ORDER
C9_RIVALS = ("bi", "angular", "taylor", "magnitude")
C9_REPORTED = ("random", pr.ORACLE)
# C10: the heuristics compared on rank stability; last-k's ranking is one fixed order (tau = 1
# whatever the model): the stability ceiling, which CascadeFlow can at best match
STABILITY_RIVALS = ("bi", "angular", "taylor", "magnitude", "last")
STABILITY_CONTEXTS = ("seeds",)  # independent training runs; checkpoints of one run are nested
# C11: per family, the accuracy counted (a task distinct from the training loss) and its margin:
# ResNet top-1 on digits; Transformer multiple-choice continuation (the pruning study's choice task)
C11_TASKS = {"resnet": ("accuracy_vs_best", "digits top-1", T.acc_margin),
             "transformer": ("choice_accuracy_vs_best",
                             f"{pr.CHOICES}-way continuation choice (chance {1 / pr.CHOICES:.2f})", T.choice_margin)}

C9_RULE = ("Transformer runs, CascadeFlow ranked by A. Primary baseline, declared before the results: last-k "
           "(depth order; A decays with depth, so ranking by A is close to it). At each k = 1..B/2 and stage (no "
           "healing, healed): the runs where CascadeFlow removes a different block set than last-k, and on exactly "
           "those G runs the held-out loss CascadeFlow minus last-k, t-interval with G - 1 df and two-sided t-test; "
           f"p-values Holm-adjusted over the (k, stage) cells with G >= 2. Better = adjusted p < {T.alpha:g} and "
           "negative. A cell where the two never differ (G = 0) cannot separate CascadeFlow from depth order: it is "
           "inconclusive there and never counted as a win; one differing run (G = 1) has no spread and no test. "
           "Beats last-k: holds if better in every cell; mixed if in some; does not hold if in none and worse in "
           "some; inconclusive otherwise. Secondary: for " + ", ".join(C9_RIVALS) + " and each stage, the "
           "per-seed mean held-out loss over k, CascadeFlow minus the heuristic, paired over seeds, Holm-adjusted "
           "over these comparisons, judged the same way. C9 holds if both parts hold; mixed if the primary part "
           "holds or is mixed otherwise, or if it does not hold while the secondary holds; does not hold if the "
           "primary part does not hold, or it is inconclusive while the secondary does not hold; inconclusive "
           "otherwise (the primary part decides); inconclusive if a statistic of either part is undefined. "
           "Per-run Kendall tau between CascadeFlow's ranking and depth order is reported. Random (the chance "
           "floor) and the greedy ablation oracle (the ceiling) are reported, not counted")
C10_RULE = ("Kendall tau of the layer ranking across training seeds (every pair of seeds; the only independent "
            "units here: checkpoints of one run are nested and not counted, and CascadeFlow's ranking uses no "
            "calibration data, so calibration subsets cannot separate it), CascadeFlow (A) minus each heuristic "
            "(" + ", ".join(STABILITY_RIVALS) + "), paired over seed pairs, p-values Holm-adjusted over the "
            f"comparisons; a difference with no spread is exact. Better = adjusted p < {T.alpha:g} and positive. "
            "last-k is one fixed order (tau = 1 whatever the model): it is the stability ceiling, which CascadeFlow "
            "can at best match, so C10 holds only if nothing is less stable than A. Holds if better than every "
            "model-dependent heuristic and identical to last-k; mixed if better in some; does not hold if in none "
            "and worse in some; inconclusive otherwise. Caveat: the 3 pairs of 3 seeds share seeds")
C11_RULE = (f"Tasks distinct from the training loss: ResNet top-1 classification accuracy on the digits validation "
            f"split; Transformer multiple-choice continuation built deterministically from the validation split "
            f"(in a window of the model's context length, the true last 1/{pr.CHOICE_FRACTION} after the rest, "
            f"among {pr.CHOICES} candidates taken from elsewhere in the split, by total log-likelihood; "
            f"{pr.CHOICE_ITEMS} items, chance "
            f"{1 / pr.CHOICES:.2f}). At every k = 1..B/2 and stage: CascadeFlow's accuracy minus that of the "
            f"heuristic with the highest mean accuracy there, paired over seeds. Competitive = non-inferior (the "
            f"lower one-sided test of a TOST) at {100 * T.acc_margin:g} accuracy points (digits) or "
            f"{100 * T.choice_margin:g} points (continuation choice), Holm-adjusted over all (model, k, stage) "
            f"comparisons; a difference with no spread is exact. Holds if competitive everywhere; mixed if "
            f"competitive somewhere and shown inferior (95 % upper bound below minus the margin) elsewhere; does "
            f"not hold if nowhere competitive and inferior somewhere; inconclusive otherwise. Next-token accuracy "
            f"(the training objective) is reported, not counted. Power as in C6, at each task's margin")

NO_COMPARISONS = "no comparisons in the pruning study"


def stage_name(stage: str) -> str:
    return "no healing" if stage == "pruned" else "healed"


def _holm_rows(d: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Holm-adjusted p (exact for rows without spread), and better/worse masks by sign (positive)."""
    p = stats.holm([exact_p(r) for _, r in d.iterrows()])
    est = d["estimate"].to_numpy(float)
    return p, significant(p) & (est > 0), significant(p) & (est < 0)


def depth_cells(depth: pd.DataFrame) -> pd.DataFrame:
    """C9's primary cells (Transformer, one per model, k and stage) with the Holm-adjusted p over
    the testable ones (two or more differing runs) and better / worse (loss: negative = better)."""
    d = depth[depth["family"] == "transformer"].reset_index(drop=True)
    testable = (d["n_differ"].to_numpy(int) >= 2) & finite_ci(d) & np.isfinite(d["p"].to_numpy(float))
    p = np.full(len(d), np.nan)
    p[testable] = stats.holm(d.loc[testable, "p"].to_numpy(float))
    est = d["estimate"].to_numpy(float)
    return d.assign(p_holm=p, better=significant(p) & (est < 0), worse=significant(p) & (est > 0))


def c9_primary(depth: pd.DataFrame) -> tuple[Verdict, pd.DataFrame]:
    """C9's primary part, CascadeFlow vs last-k on the runs where the two differ (:data:`C9_RULE`)."""
    d = depth_cells(depth)
    if d.empty:
        return INCONCLUSIVE, d
    return superiority(d["better"].to_numpy(bool), d["worse"].to_numpy(bool), True), d


def c9_verdict(primary: Verdict, secondary: Verdict, defined: bool = True) -> Verdict:
    """C9 from its two parts (:data:`C9_RULE`): the primary part (last-k) decides."""
    if not defined:
        return INCONCLUSIVE
    if primary == INCONCLUSIVE:
        return FAILS if secondary == FAILS else INCONCLUSIVE
    if primary == HOLDS:
        return HOLDS if secondary == HOLDS else MIXED
    if primary == FAILS:
        return MIXED if secondary == HOLDS else FAILS
    return MIXED


def c9(comp: pd.DataFrame, depth: pd.DataFrame | None = None) -> Finding:
    """C9 from the pruning study's ``comparisons`` rows (secondary heuristics) and its
    ``depth_order`` table (the primary baseline, last-k) (:data:`C9_RULE`)."""
    d = comp[(comp["quantity"] == "loss") & (comp["family"] == "transformer")]
    rivals = d[d["method"].isin(C9_RIVALS)]
    if rivals.empty:
        return undefined("no Transformer comparisons")
    _, worse, better = _holm_rows(rivals)  # loss: negative = CascadeFlow better
    secondary = superiority(better, worse, bool(finite_ci(rivals).all()))
    sec_defined = bool(finite_ci(rivals).all())
    shown = d[d["method"].isin((C9_PRIMARY, *C9_RIVALS, *C9_REPORTED))]
    ratios = tuple(Estimate(f"{r.model}, {stage_name(r.stage)}: perplexity ratio CascadeFlow / {r.method}",
                            np.exp(r.estimate), np.exp(r.ci_low), np.exp(r.ci_high), int(r.n), unit="seeds",
                            note={"random": "floor", pr.ORACLE: "oracle", C9_PRIMARY: "all k"}.get(r.method, ""))
                   for r in shown.itertuples())
    if depth is None or depth.empty:
        return Finding(INCONCLUSIVE, why="no depth-order table (rerun the pruning study)", secondary=ratios)
    prim, cells = c9_primary(depth)
    tested = cells[cells["n_differ"] >= 2]
    est = tuple(Estimate(f"{r.model} k = {int(r.k)} {stage_name(r.stage)}: loss CascadeFlow - last-k", r.estimate,
                         r.ci_low, r.ci_high, int(r.n_differ), p=r.p_holm, p_name="Holm p", fmt="+.4f",
                         note=f"differs in {int(r.n_differ)} of {int(r.n_runs)} runs")
                for r in cells.itertuples() if r.n_differ > 0)
    never = sorted({int(k) for k in cells.loc[cells["n_differ"] == 0, "k"]})
    primary = Estimate("(k, stage) cells where CascadeFlow beats last-k (Holm)", int(cells["better"].sum()),
                       n=len(cells), unit="cells", fmt=".0f")
    verdict = c9_verdict(prim if len(cells) else INCONCLUSIVE, secondary, sec_defined and len(cells) > 0)
    parts = [f"vs last-k better in {int(cells['better'].sum())} of {len(cells)} cells ({len(tested)} testable)"]
    if never:
        parts.append(f"never differs at k = {', '.join(map(str, never))}")
    parts.append(f"vs {len(rivals)} heuristic comparisons better in {int(better.sum())}, worse in {int(worse.sum())}")
    return Finding(verdict, primary, why="; ".join(parts), secondary=est + ratios,
                   arms=cells.drop(columns=["family"]))


def c9_vs_depth_order(depth: pd.DataFrame) -> Finding:
    """C9's primary part alone (CascadeFlow vs last-k, :data:`C9_RULE`), as the scale study measures
    it at each ladder point (no healing, no other heuristics)."""
    if depth is None or depth.empty:
        return undefined("no depth-order table")
    prim, cells = c9_primary(depth)
    tested = cells[cells["n_differ"] >= 2]
    never = sorted({int(k) for k in cells.loc[cells["n_differ"] == 0, "k"]})
    est = tuple(Estimate(f"k = {int(r.k)}: loss CascadeFlow - last-k", r.estimate, r.ci_low, r.ci_high,
                         int(r.n_differ), p=r.p_holm, p_name="Holm p", fmt="+.4f",
                         note=f"differs in {int(r.n_differ)} of {int(r.n_runs)} runs")
                for r in cells.itertuples() if r.n_differ > 0)
    primary = Estimate("k cells where CascadeFlow beats last-k (Holm; no healing)", int(cells["better"].sum()),
                       n=len(cells), unit="cells", fmt=".0f")
    why = (f"vs last-k better in {int(cells['better'].sum())}, worse in {int(cells['worse'].sum())} of {len(cells)} "
           f"cells ({len(tested)} testable)" + (f"; never differs at k = {', '.join(map(str, never))}" if never else ""))
    return Finding(prim, primary, why=why, secondary=est, arms=cells.drop(columns=["family"]))


def judge_c9(tables: dict) -> Finding:
    t = tables[pr.NAME]
    comp = t.get("comparisons")
    if comp is None or comp.empty:
        return undefined(NO_COMPARISONS)
    return c9(comp, t.get("depth_order"))


def c10(comp: pd.DataFrame) -> Finding:
    """C10 from the ``comparisons`` rows (:data:`C10_RULE`)."""
    tau = comp[comp["quantity"] == "tau"]
    d = tau[tau["context"].isin(STABILITY_CONTEXTS) & tau["method"].isin(STABILITY_RIVALS)].reset_index(drop=True)
    if d.empty:
        return undefined("no rank-stability comparison across seeds")
    p, better, worse = _holm_rows(d)
    est_ = d["estimate"].to_numpy(float)
    ceiling = d["method"].to_numpy() == "last"
    matched = ceiling & (est_ == 0) & (d["ci_low"].to_numpy(float) == 0)
    counted = better | matched
    rows = tuple(Estimate.of(r, f"{r['model']}: Kendall tau across seeds, CascadeFlow - {r['method']}", "+.2f",
                             "seed pairs", p=q, p_name="Holm p", note="ceiling" if r["method"] == "last" else "")
                 for (_, r), q in zip(d.iterrows(), p))
    worst = int(np.argmin(est_))
    verdict = superiority(counted, worse, bool(finite_ci(d).all()))
    lost = sorted({r["method"] for (_, r), w in zip(d.iterrows(), worse) if w})
    why = (f"more stable in {int(better.sum())} of {len(d)} comparisons, matches the last-k ceiling in "
           f"{int(matched.sum())} of {int(ceiling.sum())}" + (f"; less stable than {', '.join(lost)}" if lost else ""))
    if not bool(finite_ci(d).all()):
        why = "a statistic is undefined"
    return Finding(verdict, rows[worst], why=why, secondary=rows[:worst] + rows[worst + 1:])


def c11_rows(comp: pd.DataFrame) -> pd.DataFrame:
    """The counted comparisons: each family's task row (``<quantity>_vs_best``) with its margin."""
    parts = [comp[(comp["family"] == fam) & (comp["quantity"] == q)].assign(task=name, margin=margin)
             for fam, (q, name, margin) in C11_TASKS.items()]
    d = pd.concat(parts, ignore_index=True)
    return d[np.isfinite(d["estimate"].to_numpy(float))].reset_index(drop=True)


def c11(comp: pd.DataFrame) -> Finding:
    """C11 from the ``comparisons`` rows (:data:`C11_RULE`)."""
    d = c11_rows(comp)
    if d.empty:
        return undefined("no task-accuracy comparison")
    p = stats.holm([tost(r, r["margin"])["p_lower"] for _, r in d.iterrows()])
    ok = significant(p)
    inferior = d["ci_high"].to_numpy(float) < -d["margin"].to_numpy(float)
    worst, margins = [], []
    for (model, task), g in d.groupby(["model", "task"], sort=False):
        w = g.loc[g["estimate"].idxmin()]
        margins.append(100 * float(w["margin"]))
        pw = tost_power(w, w["margin"])
        worst.append(Estimate.of(w, f"{model} {task}: largest shortfall vs {w['method']} at k = {int(w['k'])} "
                                    f"({stage_name(w['stage'])}), points", "+.1f", "seeds", scale=100,
                                 note=f"non-inferior in {int(ok[d.index.isin(g.index)].sum())} of {len(g)}; "
                                      f"TOST power {pw.power:.2f}"))
    other = comp[(comp["quantity"] == "accuracy_vs_best") & (comp["family"] == "transformer")]
    if len(other):
        w = other.loc[other["estimate"].idxmin()]
        worst.append(Estimate.of(w, f"{w['model']} next-token accuracy: largest shortfall vs {w['method']} at "
                                    f"k = {int(w['k'])} ({stage_name(w['stage'])}), points", "+.1f", "seeds",
                                 scale=100, note="reported, not counted"))
    found = {"primary": worst[0], "margin": margins[0], "secondary": tuple(worst[1:])}
    if not bool(finite_ci(d).all()):
        return Finding(INCONCLUSIVE, why="a statistic is undefined", **found)
    if ok.all():
        verdict = HOLDS
    elif ok.any():
        verdict = MIXED if inferior.any() else INCONCLUSIVE
    else:
        verdict = FAILS if inferior.any() else INCONCLUSIVE
    why = f"non-inferior in {int(ok.sum())} of {len(d)} (model, k, stage) comparisons, inferior in {int(inferior.sum())}"
    return Finding(verdict, why=why, **found)
