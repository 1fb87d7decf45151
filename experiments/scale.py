"""Study 8 — along scale: does each verdict hold, strengthen or fade as training lengthens and models grow?

**Hypothesis.** Every other study takes its verdict at one point (0.2-0.6 M-parameter models,
about 1 token per parameter). A verdict that depends on where it is measured, stated at one point,
misleads. If the fan-in account describes how these networks learn, its signatures should not
vanish as training lengthens or models grow; a rival reading (the CascadeFormer gain is a
short-training effect of a smaller model) predicts that the taper's edge over the narrow uniform
model fades with tokens per parameter.

**Prediction (what would make each verdict move).** Along each ladder, C8's primary-vs-narrow
perplexity gap keeps its sign if the fan-in taper is a better allocation, and drifts to 0 (or
above) if it only helps under-trained models; C2's rho(A, F) and within-run exponent, and C5's
association, stay put if they are structural and fade if they are transients of early training.

**Method.** Character-level Pre-LN Transformers of ``depth`` blocks on the CPython standard
library source corpus (``data.corpus=stdlib``, about 11 M training characters) at two ladders:

* **tokens per parameter** (``tokens_per_param`` at the width ``base_width``): each point trains
  ``steps = tokens/param x params / (batch x context)`` of the full uniform model;
* **size** (``widths``, FFN 4 x width, ``head_dim``-dimensional heads) at one ``size_tokens_per_param``.

A point that would train more than :data:`MAX_EPOCHS` passes over the training split is refused
before anything trains (longer training would measure memorization). At every point the C8 arms
of :mod:`experiments.cascadeformer` (its arm construction, :func:`experiments.cascadeformer.arm_plan`):
the full uniform model, the narrow uniform control, the primary fan-in taper, all matched to the
primary's parameter budget, and the inverse taper (widening with depth) on the short half of the
ladder (tokens/param up to ``inverse_up_to``). Each arm's AdamW learning rate is tuned by one rule
declared before any result (:data:`TUNING_RULE`, the shared :mod:`experiments.tuning` rule): a sweep
of ``lrs`` on seed ``tune_seed`` at the tuning points (:func:`tuning_points`: ``tune_at``, the
shortest and one of >= 10 tokens/param, at ``base_width``, and every other width of the size
ladder); every point trains each arm at the rate tuned at the nearest tuning point, in log width
first (a rate does not carry across widths), then in log tokens/param. ``seeds`` seeds per arm.

After training, per point: C8's table (:func:`experiments.cascadeformer.summarize`: held-out
perplexity, paired gaps, timing against an A/A copy); from the same full uniform runs, C2's table
(:func:`experiments.fanin_vs_gradients.summarize`: rho(A, F) and the within-run exponent with and
without the first block) and C5's (:func:`experiments.gradients_vs_importance.summarize` on held-out
ablation importance) and C9's primary comparison (:func:`c9_cases`: on each full uniform run, the
held-out loss after CascadeFlow removes the ``k`` blocks of least ``A`` against last-k, k = 1..B/2,
no healing; :func:`experiments.pruning.depth_order_table` pairs them on the runs where the two
remove different blocks). Per seed, the statistics the trends are fitted to (:data:`STATISTICS`); per
statistic and ladder, the slope on log10 tokens/param and on log10 parameters, one slope per seed,
their mean with a t-interval over seeds (``summary``).

Not measured along scale: C9's other heuristics and healing (the pruning study's full analysis),
and the deep-supervision claims.

**Reading the result.** This study computes numbers only. The claim rules run unchanged on every
point's tables and the trend rule (:mod:`experiments.verdicts.scale`) decides whether each
statistic strengthens, holds steady or fades; the report's "Along scale" section and figure F13
(each statistic against tokens/param and against parameters, with t-intervals over seeds) come
from those findings. Read the per-point verdicts first: a regime such as "holds up to 3
tokens/param, not beyond" says where a one-point verdict can be trusted.

**Cost.** ``python -m experiments scale --profile scale`` trains 111 runs (the lr sweep's 60 and 66
ladder runs, of which the sweep's 15 seed-0 runs at the chosen rates are reused): tokens/param 1, 3,
10, 20 at width 32 (8 blocks, 0.11 M parameters); widths 32, 64 and 96 at 1 token/param (0.11-0.91 M
parameters, 8.5x); the lr sweep of 4 rates per arm at 1 and 10 tokens/param and at widths 64 and 96;
3 seeds. :func:`training_tokens` gives 44.9 M training tokens at width 32, 9.9 M at 64 and 21.8 M at
96; ``gfa bench sizes`` measured 20.8 k, 14.8 k and 9.1 k tokens/s for the full uniform models of
these widths on an idle 2-core machine (two threads). Measured, in resumed parts on an idle 2-core
machine: a 3-rate sweep at width 32, 3 min; the 59 ladder runs, 27 min; the sweep at widths 64 and
96 with the 12 runs it changed, 15 min; the fourth rate (3e-2, 15 runs) with the 5 runs it changed,
10 min; each point's analysis about 2 min (about 57 min in all). The grid was cut to this from one
of width 48 and 3 tokens/param on the size ladder (about 2.3 h of training). ``full`` extends both
ladders for one GPU (``device=auto``); ``smoke`` is a tiny variant for the tests (numbers mean nothing).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import scipy.stats as sps

from gfa_theory.errors import ConfigError
from gfa_theory.models import build_model
from gfa_theory.train.lifecycle import RunResult
from gfa_theory.train.run_config import resolve, run_key, training_epochs

from gfa_theory.instrument.evaluation import evaluate
from gfa_theory.methods import pruning

from . import cascadeformer as cf
from . import fanin_vs_gradients, gradients_vs_importance
from . import pruning as pr
from .plans import ImportancePlan, ModelSize, StudyPlan, TimingPlan, TrainSize, plan
from .runner import Context, run_many
from .study_io import finish
from .summary import mean_row, table
from .tuning import RULE, final_val_loss, lowest_loss_lr
from .units import ablation_units, heldout_batches

NAME = "scale"
FIGURE_PROFILES = ("scale", "full")  # the profiles whose `python -m figures` runs this study (not default)
MAX_EPOCHS = 1.05  # "about one epoch": a point above it is refused before training
TUNING_RULE = (f"per arm, at each tuning point (the shortest and a >= 10 tokens/param point of the tokens ladder, and "
               f"every other width of the size ladder): {RULE}; every ladder point trains each arm at the lr tuned at "
               f"the nearest tuning point that has the arm, nearest in log width first, then in log tokens/param")
# the per-seed statistics the trends are fitted to, and the sign that means "more support for the claim"
STATISTICS = {
    "c8_gap_narrow_pct": ("C8", -1.0, "primary vs narrow uniform: perplexity change (%)"),
    "c8_gap_full_pct": ("C8", -1.0, "primary vs full uniform: perplexity change (%)"),
    "c2_rho": ("C2", 1.0, "Spearman rho(A, F), full uniform run"),
    "c2_exponent": ("C2", 1.0, "within-run exponent of A on F"),
    "c2_exponent_no_first": ("C2", 1.0, "within-run exponent of A on F, first block excluded"),
    "c5_rho_no_first": ("C5", 1.0, "Spearman rho(ablation, A), first block excluded"),
    "c9_gap_last_mean": ("C9", -1.0, "CascadeFlow minus last-k: held-out loss, mean over k = 1..B/2 (no healing)"),
}
AXES = {"tokens": "log10_tokens_per_param", "size": "log10_params"}


@dataclass(frozen=True)
class ScalePlan:
    """The two ladders of one profile (see the module docstring for every field's role)."""

    profile: str
    depth: int
    base_width: int
    tokens_per_param: tuple[float, ...]
    widths: tuple[int, ...]
    size_tokens_per_param: float
    inverse_up_to: float
    lrs: tuple[float, ...]
    tune_at: tuple[float, ...]
    tune_seed: int
    seeds: tuple[int, ...]
    batch_size: int
    block_size: int
    warmup_steps: int
    eval_batches: int  # C8's held-out batches (cascade.eval_batches)
    eval_batch_size: int
    importance: ImportancePlan
    timing: TimingPlan
    head_dim: int = 16
    device: str = "cpu"


_TIMING = TimingPlan(batch=16, repeats=5, warmup=1, latency_calls=3, throughput_calls=1, threads=1,
                     train_batch=8, train_calls=1)
SCALE_PLANS: dict[str, ScalePlan] = {
    "smoke": ScalePlan("smoke", depth=4, base_width=16, tokens_per_param=(0.02, 0.05), widths=(16, 32),
                       size_tokens_per_param=0.05, inverse_up_to=0.02, lrs=(1e-3, 3e-3), tune_at=(0.02,),
                       tune_seed=0, seeds=(0, 1), batch_size=4, block_size=16, warmup_steps=2, eval_batches=1,
                       eval_batch_size=4, importance=ImportancePlan(batches=1, batch_size=4),
                       timing=TimingPlan(batch=4, repeats=3, warmup=1, latency_calls=1, throughput_calls=1,
                                         threads=1, train_batch=2, train_calls=1), head_dim=4),
    "scale": ScalePlan("scale", depth=8, base_width=32, tokens_per_param=(1.0, 3.0, 10.0, 20.0), widths=(32, 64, 96),
                       size_tokens_per_param=1.0, inverse_up_to=3.0, lrs=(1e-3, 3e-3, 1e-2, 3e-2), tune_at=(1.0, 10.0),
                       tune_seed=0, seeds=(0, 1, 2), batch_size=16, block_size=64, warmup_steps=20, eval_batches=16,
                       eval_batch_size=32, importance=ImportancePlan(batches=8, batch_size=32), timing=_TIMING),
    "full": ScalePlan("full", depth=8, base_width=64, tokens_per_param=(1.0, 3.0, 10.0, 20.0, 25.0),
                      widths=(32, 64, 128, 256), size_tokens_per_param=1.0, inverse_up_to=3.0,
                      lrs=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2), tune_at=(1.0, 10.0, 25.0), tune_seed=0, seeds=(0, 1, 2, 3, 4),
                      batch_size=64, block_size=128, warmup_steps=100, eval_batches=64, eval_batch_size=64,
                      importance=ImportancePlan(batches=32, batch_size=64),
                      timing=replace(_TIMING, batch=64, repeats=25, device="auto"), device="auto"),
}


def scale_plan(profile: str) -> ScalePlan:
    if profile not in SCALE_PLANS:
        raise ConfigError(f"the scale study has no '{profile}' profile (choices: {', '.join(SCALE_PLANS)}): "
                          f"it is not part of the default profile")
    return SCALE_PLANS[profile]


# ---- ladder points -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    """One ladder point: a width and a target tokens per parameter (of the full uniform model)."""

    width: int
    tokens_per_param: float

    @property
    def key(self) -> str:
        return f"d{self.width}_tpp{self.tokens_per_param:g}"


def points(sp: ScalePlan) -> list[Point]:
    """Both ladders (their shared point once), tokens ladder first."""
    pts = [Point(sp.base_width, t) for t in sp.tokens_per_param]
    pts += [Point(w, sp.size_tokens_per_param) for w in sp.widths]
    return list(dict.fromkeys(pts))


def arms(sp: ScalePlan, pt: Point) -> list[str]:
    """C8's arms at a point: reference, control, primary; the inverse taper on the short half."""
    out = [cf.REFERENCE, cf.CONTROL, cf.PRIMARY]
    return out + ["inverse"] if pt.tokens_per_param <= sp.inverse_up_to else out


def _template(sp: ScalePlan) -> StudyPlan:
    """The StudyPlan whose other fields (optimizer settings, logging) a point keeps."""
    return plan("smoke" if sp.profile == "smoke" else "default")


def point_plan(sp: ScalePlan, pt: Point, lr: float, steps: int = 1) -> StudyPlan:
    """A StudyPlan of one point (what the cascadeformer arm construction reads), training ``steps``
    AdamW steps at ``lr`` on the stdlib corpus; inverse among the exploratory arms where it runs."""
    t = _template(sp)
    model = ModelSize(n_embd=pt.width, n_head=max(1, pt.width // sp.head_dim), d_ff=4 * pt.width,
                      block_size=sp.block_size)
    train = TrainSize(steps=steps, batch_size=sp.batch_size, lr=lr, sgd_lr=t.train.sgd_lr, eval_interval=0,
                      checkpoint_interval=0, eval_batches=t.train.eval_batches, series_points=t.train.series_points,
                      warmup_steps=min(sp.warmup_steps, max(0, steps - 1)), gain_every=None, device=sp.device,
                      corpus="stdlib")
    cascade = replace(t.cascade, depth=sp.depth, steps=steps, quantum=max(8, model.d_ff // 8),
                      eval_batches=sp.eval_batches, eval_batch_size=sp.eval_batch_size,
                      exploratory=tuple(a for a in arms(sp, pt) if a not in cf.ROLES), sweep_factor=1, sweep_seeds=(),
                      timing=sp.timing)
    return replace(t, profile=sp.profile, model=model, train=train, cascade=cascade, seeds=sp.seeds,
                   importance=sp.importance)


@functools.lru_cache(maxsize=None)
def uniform_params(sp: ScalePlan, pt: Point) -> int:
    """Parameters of the full uniform model of a point (what tokens/param counts against)."""
    cfg, _ = resolve(cf._run(point_plan(sp, pt, 1e-3), cf.arm_plan(point_plan(sp, pt, 1e-3), cf.REFERENCE), 0, 1)[1])
    return sum(q.numel() for q in build_model(cfg.model_name, cfg.model).parameters())


def point_steps(sp: ScalePlan, pt: Point) -> int:
    return max(1, round(pt.tokens_per_param * uniform_params(sp, pt) / (sp.batch_size * sp.block_size)))


def arm_run(sp: ScalePlan, pt: Point, arm: str, seed: int, lr: float) -> tuple[dict, object]:
    """One run: the cascadeformer arm construction at this point's size, budget and lr."""
    steps = point_steps(sp, pt)
    p = point_plan(sp, pt, lr, steps)
    desc, cfg = cf._run(p, cf.arm_plan(p, arm), seed, steps)
    epochs = training_epochs(cfg)
    if epochs > MAX_EPOCHS:
        raise ConfigError(f"scale point {pt.key} trains {epochs:.2f} epochs of the corpus (> {MAX_EPOCHS:g}): "
                          f"shorten the ladder or shrink the model")
    return {**desc, "point": pt.key, "width": pt.width, "target_tokens_per_param": pt.tokens_per_param, "lr": lr,
            "epochs": epochs}, cfg


def tuning_points(sp: ScalePlan) -> list[Point]:
    """Where the lr is tuned: ``tune_at`` on the tokens ladder (at ``base_width``) and every other
    width of the size ladder at its tokens/param (a rate tuned at one width does not carry to
    another: the effective learning rate moves with width)."""
    pts = [Point(sp.base_width, t) for t in sp.tune_at]
    return pts + [Point(w, sp.size_tokens_per_param) for w in sp.widths if w != sp.base_width]


def tuning_configs(sp: ScalePlan) -> list[tuple[dict, object]]:
    """The lr sweep: every arm x lr on the tuning seed at each tuning point."""
    return [arm_run(sp, pt, arm, sp.tune_seed, lr) for pt in tuning_points(sp) for arm in arms(sp, pt)
            for lr in sp.lrs]


def lr_for(sp: ScalePlan, tuned: dict, pt: Point, arm: str) -> float:
    """:data:`TUNING_RULE`: the lr tuned at the nearest tuning point that has the arm, nearest first in
    log width, then in log tokens/param (``tuned``: (width, tokens/param, arm) -> lr)."""
    have = [(w, t) for w, t, a in tuned if a == arm]
    if not have:
        raise ConfigError(f"arm {arm} is tuned at no tuning point")
    near = min(have, key=lambda wt: (abs(math.log(wt[0] / pt.width)), abs(math.log(wt[1] / pt.tokens_per_param)),
                                     wt[1]))
    return tuned[(*near, arm)]


def configs(profile: str, tuned: dict | None = None) -> list[tuple[dict, object]]:
    """(descriptors, RunConfig) of the study's runs: without ``tuned`` the lr sweep; with it
    ((width, tokens/param, arm) -> lr), every point x arm x seed at its tuned lr."""
    sp = scale_plan(profile)
    if tuned is None:
        return tuning_configs(sp)
    return [arm_run(sp, pt, arm, seed, lr_for(sp, tuned, pt, arm)) for pt in points(sp) for arm in arms(sp, pt)
            for seed in sp.seeds]


def training_tokens(profile: str, tuned_lr: float | None = None) -> dict[int, int]:
    """Training tokens per width of every distinct run of ``profile`` (the grid's cost, before any
    result: the lr only changes which runs coincide, so one lr stands for every tuned one).
    Divided by measured tokens/s per width (``gfa bench sizes``) it gives the wall time."""
    sp = scale_plan(profile)
    lr = sp.lrs[len(sp.lrs) // 2] if tuned_lr is None else tuned_lr
    tuned = {(pt.width, pt.tokens_per_param, a): lr for pt in tuning_points(sp) for a in arms(sp, pt)}
    runs = {run_key(c): (d, c) for d, c in configs(profile) + configs(profile, tuned)}
    out: dict[int, int] = {}
    for d, c in runs.values():
        out[d["width"]] = out.get(d["width"], 0) + c.train.steps * c.train.batch_size * c.model.block_size
    return out


def tune(sp: ScalePlan, runs: list, results: list[RunResult | None]) -> tuple[dict, pd.DataFrame]:
    rows = [{"tune_width": d["width"], "tune_point": d["target_tokens_per_param"], "arm": d["schedule"],
             "lr": d["lr"], "final_val_loss": final_val_loss(r)} for (d, _), r in zip(runs, results)]
    tuned, table = lowest_loss_lr(pd.DataFrame(rows), by=["tune_width", "tune_point", "arm"])
    # a rate at the sweep's edge may not be the best one: said in the table (and the report)
    edge = table["lr"].isin((min(sp.lrs), max(sp.lrs))) & table["tuned"]
    return tuned, table.assign(at_sweep_edge=edge)


# ---- per-point measurement -----------------------------------------------------------------------

def _loglog(d: pd.DataFrame) -> float:
    d = d[(d["A"] > 0) & (d["F"] > 0)]
    return float(np.polyfit(np.log(d["F"]), np.log(d["A"]), 1)[0]) if len(d) >= 2 and d["F"].nunique() > 1 else np.nan


def _spearman(x, y) -> float:
    return float(sps.spearmanr(x, y).statistic) if len(x) >= 3 else np.nan


def c9_cases(uniform: list[RunResult], batches: list) -> pd.DataFrame:
    """C9's primary comparison on the full uniform runs of one point: per run and ``k`` = 1..B/2,
    the held-out loss (no healing) of the model CascadeFlow prunes (the ``k`` blocks of least
    ``A``) and of last-k (depth order), in the pruning study's case rows
    (:func:`experiments.pruning.depth_order_cases`: zero difference where the two remove the same blocks)."""
    rows = []
    for res in uniform:
        names = pruning.removable_blocks(res.model)
        K = len(names) // 2
        orders = {m: pr._rank(m, res.model, res.gradients, None).order for m in (pr.CASCADEFLOW, pr.DEPTH_ORDER)}
        tau = pr.kendall_tau(orders[pr.CASCADEFLOW], orders[pr.DEPTH_ORDER])
        for k in range(1, K + 1):
            removed = {m: list(o[:k]) for m, o in orders.items()}
            loss = {m: evaluate(pruning.prune(res.model, r), batches).loss for m, r in removed.items()}
            rows.append({"model": "transformer", "family": "transformer", "depth_B": len(names),
                         "run_id": res.run_dir.name, "seed": res.config.train.seed, "k": k, "stage": "pruned",
                         "tau": tau, "differs": set(removed[pr.CASCADEFLOW]) != set(removed[pr.DEPTH_ORDER]),
                         "removed_cascadeflow": ";".join(removed[pr.CASCADEFLOW]),
                         "removed_last": ";".join(removed[pr.DEPTH_ORDER]),
                         "loss_cascadeflow": loss[pr.CASCADEFLOW], "loss_last": loss[pr.DEPTH_ORDER],
                         "loss_diff": loss[pr.CASCADEFLOW] - loss[pr.DEPTH_ORDER]})
    return pd.DataFrame(rows)


def seed_statistics(c8_runs: pd.DataFrame, units: pd.DataFrame, c9: pd.DataFrame) -> list[dict]:
    """Per seed: the statistics of :data:`STATISTICS` at one point (each from one run or a pair)."""
    rows = []
    by = {a: d.set_index("seed")["val_loss"] for a, d in c8_runs.groupby("schedule")}
    for seed in sorted(c8_runs["seed"].unique()):
        prim = by[cf.PRIMARY][seed]
        vals = {"c8_gap_narrow_pct": 100 * math.expm1(prim - by[cf.CONTROL][seed]),
                "c8_gap_full_pct": 100 * math.expm1(prim - by[cf.REFERENCE][seed])}
        u = units[units["seed"] == seed].sort_values("order")
        rest = u[u["order"] > 1]
        vals.update(c2_rho=_spearman(u["F"], u["A"]), c2_exponent=_loglog(u), c2_exponent_no_first=_loglog(rest),
                    c5_rho_no_first=_spearman(rest["A"], rest["imp_ablation"]),
                    c9_gap_last_mean=float(c9.loc[c9["seed"] == seed, "loss_diff"].mean()))
        rows += [{"seed": int(seed), "statistic": k, "value": v} for k, v in vals.items()]
    return rows


def measure_point(sp: ScalePlan, pt: Point, runs: list, results: list[RunResult], ctx: Context) -> dict:
    """Every table of one point: C8's runs and summary, C2's and C5's summaries from the uniform runs
    (the claim rules read these unchanged), and the per-seed statistics."""
    p = point_plan(sp, pt, 1e-3, runs[0][1].train.steps)  # widths and timing only: the lr plays no part
    plans = {r.run_dir.name: cf.arm_plan(p, d["schedule"]) for (d, _), r in zip(runs, results)}
    batches = heldout_batches(results[0], sp.eval_batches, sp.eval_batch_size)
    c8_runs, timed = cf.evaluate_runs(runs, results, plans, batches)
    times, tsum = cf.time_schedules(timed, results[0].config.model.vocab_size, p)
    c8 = cf.summarize(c8_runs, tsum)
    uni = [(d, c, r) for (d, c), r in zip(runs, results) if d["schedule"] == cf.REFERENCE]
    desc = [({"family": "transformer", "supervision": "final", "depth_B": sp.depth}, c) for _, c, _ in uni]
    units = ablation_units(desc, [r for *_, r in uni], sp.importance, ctx)
    units["imp_ablation_norm"] = units["imp_ablation"] / units.groupby("run_id")["imp_ablation"].transform("mean")
    fan = fanin_vs_gradients.summarize(units)
    imp = gradients_vs_importance.summarize(units)
    cases = c9_cases([r for *_, r in uni], batches)
    depth_order = pr.depth_order_table(cases)
    params = int(c8_runs.loc[c8_runs["schedule"] == cf.REFERENCE, "params"].iloc[0])
    tpp = float(c8_runs.loc[c8_runs["schedule"] == cf.REFERENCE, "tokens_per_param"].iloc[0])
    tag = {"point": pt.key, "width": pt.width, "params": params, "tokens_per_param": tpp,
           "on_tokens": pt.width == sp.base_width, "on_size": pt.tokens_per_param == sp.size_tokens_per_param}
    stats_rows = [{**tag, **r} for r in seed_statistics(c8_runs, units, cases)]
    return {name: df.assign(**tag) for name, df in
            (("c8_runs", c8_runs.assign(epochs=[d["epochs"] for d, _ in runs])),
             ("c8", c8), ("fanin", fan), ("importance", imp), ("units", units), ("timing", tsum),
             ("c9_cases", cases), ("depth_order", depth_order),
             ("seed_stats", pd.DataFrame(stats_rows)))}


# ---- trends --------------------------------------------------------------------------------------

def point_means(seed_stats: pd.DataFrame) -> pd.DataFrame:
    """Per point and statistic: mean over seeds with its t-interval (what F13 draws)."""
    rows = []
    for (pt, stat), d in seed_stats.groupby(["point", "statistic"], sort=False):
        first = d.iloc[0]
        rows.append({**mean_row(f"{pt}: {stat}", d["value"], quantity=stat, setting=pt),
                     **{k: first[k] for k in ("width", "params", "tokens_per_param", "on_tokens", "on_size")}})
    return pd.DataFrame(rows)


def trend_row(values: pd.DataFrame, x: str, stat: str, axis: str) -> dict:
    """One statistic's trend along one ladder: per seed, the OLS slope of the statistic on ``x``
    (log10 tokens/param or log10 parameters) over the ladder's points; the mean slope over seeds
    with a t-interval (df = seeds - 1) and a one-sample t-test against 0."""
    slopes = []
    for _, d in values.groupby("seed"):
        d = d[np.isfinite(d["value"].to_numpy(float))]
        slopes.append(float(np.polyfit(d[x], d["value"], 1)[0]) if d[x].nunique() >= 2 else np.nan)
    slopes = [s for s in slopes if np.isfinite(s)]
    row = mean_row(f"{stat}: slope per decade of {axis}", slopes, method="OLS slope per seed; t-interval over seeds",
                   family="transformer", setting="trend", quantity=stat, predictor=AXES[axis])
    spread = len(slopes) > 1 and np.std(slopes, ddof=1) > 0
    row["p"] = float(sps.ttest_1samp(slopes, 0.0).pvalue) if spread else np.nan
    row["n_points"] = int(values["point"].nunique())
    return row


def trends(seed_stats: pd.DataFrame) -> pd.DataFrame:
    """Every statistic's slope along each ladder (rows keyed ``setting=trend``, ``quantity`` = the
    statistic, ``predictor`` = the axis)."""
    s = seed_stats.assign(log10_tokens_per_param=np.log10(seed_stats["tokens_per_param"].astype(float)),
                          log10_params=np.log10(seed_stats["params"].astype(float)))
    rows = []
    for axis, on in (("tokens", "on_tokens"), ("size", "on_size")):
        ladder = s[s[on].astype(bool)]
        for stat in STATISTICS:
            rows.append(trend_row(ladder[ladder["statistic"] == stat], AXES[axis], stat, axis))
    return table(rows).assign(n_points=[r["n_points"] for r in rows])


def run(profile: str = "scale", ctx: Context | None = None) -> pd.DataFrame:
    """Tune every arm's lr, train every point x arm x seed, measure each point, fit the trends, write."""
    ctx = ctx or Context(profile)
    started = time.time()
    sp = scale_plan(ctx.profile)
    first = configs(ctx.profile)
    first_res = run_many([c for _, c in first], ctx, f"{NAME} (lr sweep)", diverged_as_none=True)
    tuned, tuning = tune(sp, first, first_res)
    runs = configs(ctx.profile, tuned)
    results = run_many([c for _, c in runs], ctx, NAME)
    parts = []
    for pt in points(sp):
        idx = [i for i, (d, _) in enumerate(runs) if d["point"] == pt.key]
        parts.append(measure_point(sp, pt, [runs[i] for i in idx], [results[i] for i in idx], ctx))
    tables = {k: pd.concat([p[k] for p in parts], ignore_index=True) for k in parts[0]}
    summary = trends(tables["seed_stats"])
    kept = [r for r in first_res if r is not None] + results
    diverged = [run_key(c) for (_, c), r in zip(first, first_res) if r is None]
    meta = {"scale_plan": {k: v for k, v in dataclasses.asdict(sp).items() if k not in ("importance", "timing")},
            "points": [pt.key for pt in points(sp)], "tuning_rule": TUNING_RULE, "max_epochs": MAX_EPOCHS,
            "tuned_lr": {f"d{w}_tpp{t:g}/{a}": lr for (w, t, a), lr in tuned.items()}, "diverged": diverged}
    return finish(ctx, NAME, tables.pop("c8_runs"), summary, kept, started, main_table="runs", meta=meta,
                  tuning=tuning, point_means=point_means(tables["seed_stats"]), **tables)
