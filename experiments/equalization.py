"""Study 3 — intervention: does equalizing what each block learns restore late layers?

**Hypothesis (GFA: structure, not magnitude).** If late layers contribute little only because
their gradients are *small*, giving every block the same step size should restore their value.
If the bottleneck is structural (few gradient paths, so the gradient's *direction* carries less
diverse signal), equalizing magnitudes should not help.

**Prediction (the paper's claim).** Under equalization the late blocks' value (held-out ablation
Delta-loss) is no higher than under the matched control: the change lies inside a declared
equivalence margin (claim C6, :mod:`experiments.verdicts.equalization`).

**Method.** Transformers of one depth (``plan.equalization.depth`` blocks), every run with the
tracker's update totals on (``train.track_updates``: ``U`` = sum over steps of each block's
applied update norm, ``displacement`` = its distance from initialization). Arms, by optimizer:

* SGD (momentum 0.9, clipping at 1.0, equalize-then-clip): ``none``; ``equalize`` (each block's
  gradient rescaled to the mean block norm, before clipping); ``global_rescale`` (one common factor
  on all block gradients that changes their joint norm exactly as ``equalize`` would, ratios
  kept). Each arm's learning rate is tuned on one seed by the rule :data:`TUNING_RULE`, declared
  here before any result, then confirmed on the other seeds at that rate. ``equalize`` and
  ``global_rescale`` are repeated without clipping (``grad_clip=0``) at their tuned rates.
* AdamW (the plan's learning rate): ``none``; ``equalize_update`` (after the optimizer computes
  its step, each block's applied step is rescaled to the mean block step norm: a per-block trust
  ratio); ``equalize`` on the gradients, kept as a labelled **placebo**.

After training: per-block ablation Delta-loss (nats) on fixed held-out batches. Outcomes per run:
the late-half Delta-loss sum ``late_dloss`` (the primary, share-free outcome), the late-half and
last-block shares of (positive) ablation importance, validation loss; manipulation check: the
coefficient of variation of ``U`` across blocks (``cv_U``) and the late half's share of ``U`` (and
the same for displacement). Comparisons are paired by seed (t-intervals).

**Controls (which rival each arm rules out).**

* *Effective learning rate*: equalizing shrinks the joint gradient norm (mean / rms of the block
  norms), i.e. lowers the step size. ``global_rescale`` makes exactly that change uniformly, so
  ``equalize - global_rescale`` isolates the per-block *balance*; tuning every arm's rate by one
  rule removes "the baseline rate happened to suit one arm".
* *Clipping*: clipping at 1.0 binds under SGD and renormalizes the equalized gradient; the no-clip
  pair shows whether the effect depends on it.
* *Metric denominator*: a late-half *share* rises when the first block's Delta-loss falls, with
  no change in the late blocks; ``late_dloss`` (nats, summed) has no denominator.
* *Adam's scale invariance*: Adam divides each coordinate by its running RMS, so rescaling a
  block's gradient by a (slowly varying) factor barely changes its step: gradient ``equalize``
  under AdamW is a placebo, and the manipulation check should show it leaves ``cv_U`` near the
  baseline's. ``equalize_update`` acts on the step itself.

**Reading the result.** ``summary`` has, per arm (at its tuned rate), the mean of every outcome
and manipulation measure, the tuned rates, and paired differences ``<arm> - <control>: <measure>``.
First read the manipulation check: an arm whose ``cv_U`` is not well below its control's did not
equalize what the blocks learned and cannot test the claim (C6 calls that comparison
inconclusive). Then the primary outcome: a ``late_dloss`` difference inside the margin supports
"does not restore"; one clearly above 0 means equalization did restore late value. ``tuning``
lists every SGD arm's validation loss at every rate. Figure F6: per-block Delta-loss and share
for every arm, and per-block ``U`` (the manipulation check).
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd

from gfa_theory.train.lifecycle import RunResult
from gfa_theory.train.run_config import RunConfig, run_key

from .plans import StudyPlan, gpt_run, plan
from .runner import Context, run_many
from .study_io import finish
from .summary import keyed, mean_row, paired_row, table
from .units import ablation_units

NAME = "equalization"

ADAMW_ARMS = ("none", "equalize_update", "equalize")  # gradient "equalize" under AdamW: the placebo
SGD_ARMS = ("none", "equalize", "global_rescale")
NOCLIP_ARMS = ("equalize", "global_rescale")

# The tuning rule, fixed before any result: per SGD arm (clipped), the learning rate of
# plan.equalization.sgd_lrs with the lowest final validation loss (the run's own evaluation
# batches, metrics.csv) on seed plan.equalization.tune_seed; a diverged run counts as +inf and a
# tie goes to the smaller rate. The other seeds are trained at the chosen rate only (confirmation),
# and the no-clip variants reuse their arm's rate. AdamW is not tuned (the plan's rate for all arms).
TUNING_RULE = ("per SGD arm: the lr with the lowest final validation loss on the tuning seed "
               "(diverged = +inf, ties to the smaller lr); other seeds confirm at that lr")

# (arm, control, role): the primary comparison per optimizer is the one claim C6 judges
COMPARISONS = (
    ("adamw/equalize_update", "adamw/none", "primary"),
    ("sgd/equalize", "sgd/global_rescale", "primary"),
    ("adamw/equalize", "adamw/none", "placebo"),
    ("sgd/equalize", "sgd/none", "secondary"),
    ("sgd/global_rescale", "sgd/none", "secondary"),
    ("sgd no-clip/equalize", "sgd no-clip/global_rescale", "secondary"),
)
PRIMARY = {arm.split("/")[0]: (arm, ctl) for arm, ctl, role in COMPARISONS if role == "primary"}
OUTCOMES = ("late_dloss", "late_half_share", "last_block_share", "first_dloss", "val_loss")
MANIPULATION = ("cv_U", "late_share_U", "cv_displacement", "late_share_displacement")


def arm_name(optimizer: str, intervention: str, grad_clip: float) -> str:
    return f"{optimizer}{'' if grad_clip > 0 else ' no-clip'}/{intervention}"


def _run(p: StudyPlan, optimizer: str, intervention: str, seed: int, lr: float | None = None,
         grad_clip: float | None = None) -> tuple[dict, RunConfig]:
    cfg = gpt_run(p, n_blocks=p.equalization.depth, seed=seed, optimizer=optimizer, lr=lr,
                  intervention=intervention)
    train_kw = {"track_updates": True}  # the manipulation check: U and displacement per block
    if grad_clip is not None:
        train_kw["grad_clip"] = grad_clip
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train_kw))
    tc = cfg.train
    desc = {"optimizer": optimizer, "intervention": intervention, "depth_B": p.equalization.depth,
            "lr": tc.lr, "grad_clip": tc.grad_clip, "arm": arm_name(optimizer, intervention, tc.grad_clip)}
    return desc, cfg


def configs(profile: str, tuned: dict[str, float] | None = None) -> list[tuple[dict, RunConfig]]:
    """(descriptors, RunConfig) of the study's runs. Without ``tuned`` (SGD arm -> lr): the first
    phase, AdamW on every seed and the SGD lr sweep on the tuning seed; with it, also the SGD arms
    on the other seeds and the no-clip variants, at the tuned rates."""
    p = plan(profile)
    e = p.equalization
    out = [_run(p, "adamw", inter, seed) for inter in ADAMW_ARMS for seed in p.seeds]
    out += [_run(p, "sgd", inter, e.tune_seed, lr) for inter in SGD_ARMS for lr in e.sgd_lrs]
    if tuned is not None:
        out += [_run(p, "sgd", inter, seed, tuned[f"sgd/{inter}"]) for inter in SGD_ARMS
                for seed in p.seeds if seed != e.tune_seed]
        out += [_run(p, "sgd", inter, seed, tuned[f"sgd/{inter}"], grad_clip=0.0) for inter in NOCLIP_ARMS
                for seed in e.noclip_seeds]
    return out


# ---- training that survives a diverged run -------------------------------------------------------

def train_runs(cfgs: list[RunConfig], ctx: Context, desc: str) -> list[RunResult | None]:
    """The runs through the studies' run cache; a diverged run (a high learning rate, no
    clipping) is None instead of stopping the study: tuning counts it as +inf."""
    return run_many(cfgs, ctx, desc, diverged_as_none=True)


# ---- tuning ------------------------------------------------------------------------------------------

def final_val_loss(res: RunResult | None) -> float:
    """The run's last validation loss (metrics.csv); +inf for a diverged run."""
    if res is None:
        return float("inf")
    val = res.metrics[res.metrics["split"] == "val"]
    loss = float(val["loss"].iloc[-1]) if len(val) else float("nan")
    return loss if np.isfinite(loss) else float("inf")


def tune(runs: list[tuple[dict, RunConfig]], results: list[RunResult | None], tune_seed: int
         ) -> tuple[dict[str, float], pd.DataFrame]:
    """:data:`TUNING_RULE`: each SGD arm's tuned lr, and the table of every (arm, lr) it compared."""
    rows = [{"arm": d["arm"], "lr": d["lr"], "seed": c.train.seed, "final_val_loss": final_val_loss(r)}
            for (d, c), r in zip(runs, results)
            if d["optimizer"] == "sgd" and d["grad_clip"] > 0 and c.train.seed == tune_seed]
    table = pd.DataFrame(rows).drop_duplicates(["arm", "lr"])
    tuned = {}
    for arm, d in table.groupby("arm", sort=False):
        d = d.sort_values("lr")  # a stable argmin over ascending lrs: ties go to the smaller
        tuned[arm] = float(d["lr"].iloc[int(np.argmin(d["final_val_loss"].to_numpy()))])
    table["tuned"] = [tuned[a] == lr for a, lr in zip(table["arm"], table["lr"])]
    return tuned, table


# ---- per-run measures ----------------------------------------------------------------------------------

def _cv(x: np.ndarray) -> float:
    """Coefficient of variation across blocks (population SD / mean): 0 when all are equal."""
    return float(x.std() / x.mean()) if x.mean() > 0 else float("nan")


def run_measures(units: pd.DataFrame, score: str = "imp_ablation") -> pd.DataFrame:
    """Per run: late-half outcomes (absolute Delta-loss and shares of the positive ablation
    importance), validation loss, and the manipulation check on U and displacement."""
    rows = []
    for rid, d in units.groupby("run_id", sort=False):
        d = d.sort_values("order")
        dloss = d[score].to_numpy(float)
        imp = np.clip(dloss, 0, None)
        total, half = imp.sum(), len(imp) // 2
        row = {k: d[k].iloc[0] for k in ("run_id", "seed", "optimizer", "intervention", "arm", "lr", "grad_clip",
                                         "tuned", "val_loss")}
        row.update(late_dloss=dloss[half:].sum(), first_dloss=dloss[0],
                   late_half_share=imp[half:].sum() / total if total > 0 else np.nan,
                   last_block_share=imp[-1] / total if total > 0 else np.nan)
        for q, name in (("U", "U"), ("displacement", "displacement")):
            v = d[q].to_numpy(float) if q in d else np.full(len(d), np.nan)
            row[f"cv_{name}"] = _cv(v)
            row[f"late_share_{name}"] = v[half:].sum() / v.sum() if v.sum() > 0 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(measures: pd.DataFrame, tuned: dict[str, float]) -> pd.DataFrame:
    """Per arm (its tuned runs): means of every measure; tuned rates; paired differences of every
    comparison in :data:`COMPARISONS` (primary ones first). Rows are keyed by ``arm``, ``quantity``
    (the measure, or ``tuned_lr``) and, for a comparison, ``against`` (its control) and ``setting``
    (its role: primary, placebo or secondary)."""
    rows = [keyed({"test": f"{arm}: tuned lr", "estimate": lr, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan,
                   "r2": np.nan, "n": 1, "n_groups": 1, "method": TUNING_RULE}, arm=arm, quantity="tuned_lr")
            for arm, lr in tuned.items()]
    m = measures[measures.tuned]
    by_arm = {arm: d.set_index("seed") for arm, d in m.groupby("arm", sort=False)}
    for arm, d in by_arm.items():
        for col in (*OUTCOMES, *MANIPULATION):
            rows.append(mean_row(f"{arm}: {col}", d[col], arm=arm, quantity=col))
    for arm, ctl, role in COMPARISONS:
        if arm not in by_arm or ctl not in by_arm:
            continue
        a, b = by_arm[arm], by_arm[ctl]
        seeds = sorted(set(a.index) & set(b.index))
        for col in (*OUTCOMES, *MANIPULATION):
            rows.append(keyed(paired_row(f"{arm} - {ctl}: {col}", a.loc[seeds, col], b.loc[seeds, col], r2=np.nan,
                                         n_groups=len(seeds), method=f"{role}; paired by seed, t-interval"),
                              arm=arm, against=ctl, setting=role, quantity=col))
    return table(rows)


def run(profile: str = "default", ctx: Context | None = None) -> pd.DataFrame:
    """Tune the SGD rates, train (or read back) the rest, score block ablation, compare arms, write."""
    ctx = ctx or Context(profile)
    started = time.time()
    p = plan(ctx.profile)
    first = configs(ctx.profile)
    first_res = train_runs([c for _, c in first], ctx, f"{NAME} (AdamW, SGD lr sweep)")
    tuned, tuning = tune(first, first_res, p.equalization.tune_seed)
    runs = configs(ctx.profile, tuned)
    rest = train_runs([c for _, c in runs[len(first):]], ctx, f"{NAME} (SGD at the tuned lr)")
    results = first_res + rest
    kept = [(d, c, r) for (d, c), r in zip(runs, results) if r is not None]
    for d, c, _ in kept:  # the runs that the comparisons use: AdamW, and SGD at its arm's tuned lr
        d["tuned"] = d["optimizer"] == "adamw" or tuned[f"sgd/{d['intervention']}"] == d["lr"]
    scored = [(d, c, r) for d, c, r in kept if d["tuned"]]  # an untuned lr's run only served the tuning
    units = ablation_units([(d, c) for d, c, _ in scored], [r for *_, r in scored], p.importance, ctx)
    measures = run_measures(units)
    summary = summarize(measures, tuned)
    diverged = [run_key(c) for (_, c), r in zip(runs, results) if r is None]
    return finish(ctx, NAME, units, summary, [r for *_, r in kept], started, shares=measures, tuning=tuning,
                  meta={"sgd_lrs": list(p.equalization.sgd_lrs), "tune_seed": p.equalization.tune_seed,
                        "tuned_lr": tuned, "tuning_rule": TUNING_RULE, "diverged": diverged})
