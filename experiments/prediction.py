"""Beyond the paper — can the profile of A be predicted before training, for every norm placement?

**Hypothesis.** The mechanism study (:mod:`experiments.mechanism`) found that the full product of
measured branch gains fits the trained profile of the accumulated gradient ``A`` far better than
path counts, but its gains are averaged over the same run whose ``A`` it fits: that is a
description, not a prediction. A designer choosing widths or a norm placement wants the profile
before training. If the gains that shape ``A`` are set by the architecture and its initialization,
gains measured at step 0, or in the first few percent of training, predict the trained profile as
well as the training-averaged ones. And if Post-LN defeated every account only because the
accounts left out the norms' own Jacobians, putting the measured norm gains in
(:mod:`gfa_theory.theory.gains`, ``norms`` / ``heads`` / ``out``) brings its error down to the
Pre-LN level.

**Prediction.** H6: per arm, the product account with norm gains measured at initialization
(and over the first 1 % and 5 % of training) has a profile error no worse than the same account
fed with the training-averaged gains, within a declared margin. H7: with norm gains, Post-LN's
error is equivalent to Pre-LN's (TOST). The rules, margins and verdicts are declared in
:mod:`experiments.verdicts.prediction` (margins in :data:`~experiments.verdicts.toolkit.THRESHOLDS`).

**Method.** One arm per norm placement ``GPTConfig.norm`` supports (:data:`ARMS`: Pre-LN,
Post-LN, Peri-LN, Mix-LN (the first quarter of the blocks Post-LN, the rest Pre-LN), DeepNorm
(Post-LN with the skip gain ``alpha = (2N)^(1/4)``, N = 2B branches) and LayerNorm Scaling), each
at the plan's middle depth, plus the ResNet family (:data:`RESNET_ARM`: the pre-activation ResNet
at the plan's middle stage depth, as the fan-in study trains it). Model size, steps and seeds are
those of a StudyPlan (:data:`SIZES`: the ``scale`` profile trains at the ``default`` profile's
size). Every run samples branch and norm gains on fixed held-out batches
(``train.heldout_gain_steps``, :class:`gfa_theory.train.loop.HeldoutGains`) at the steps the
windows need (:func:`gain_steps`): four samples spread over each of the first 0 % (step 0 alone),
1 %, 5 % and 25 % of training (:func:`gfa_theory.instrument.gains.early_gain_steps`) and every
``gain_every`` steps over the whole run; the final model's held-out gains are measured after
training on the same batches. Per run, gain window (:data:`WINDOWS`: init, 1 %, 5 %, 25 %,
training-averaged, final) and account (counts, aligned, orthogonal, product: 
:func:`gfa_theory.instrument.gains.predict_profile`), with and without the norm gains, the
predicted branch profile is scored against the run's trained ``A`` by the mechanism study's error
(:func:`gfa_theory.theory.gains.log_profile_error`: RMS over branches of
``log(pred / mean) - log(A / mean)``; 0 = the right shape).

From prediction to design (exploratory, C8's setting): a ``predicted`` CascadeFormer arm whose
width schedule comes from the profile predicted *before training*
(:func:`gfa_theory.methods.taper.predicted_profile`: product account with norm gains, the model
initialized with the run's seed; ``gfa taper --predict`` prints the same widths), matched to the
primary fan-in taper's parameter budget by the cascadeformer study's own arm construction
(:func:`experiments.cascadeformer.arm_plan`), trained like its arms, and compared paired by seed
with the primary and the narrow uniform arm of the same point (the cascadeformer study's runs:
cache hits of its profile). Held-out loss on the cascadeformer study's batches.

**Controls.** The training-averaged window is the mechanism study's account (on held-out
batches here, so every window is measured alike); counts need no gains and are the floor any
gain account must beat. Without norm gains the accounts are the mechanism study's; the arms where
the norms sit only on a branch's own path (Pre-LN, LayerNorm Scaling) change only through the
final norm. Measuring gains leaves training bit-identical (``tests/test_norm_gains.py``).

**Limits.** One model size (the default profile's, about 1 token per parameter), one depth per
family, 3 seeds: H6 and H7 are per-arm tests on 3 clusters (t with 2 df), powered only for large
effects. DeepNorm here is its skip gain only (its initialization scaling ``beta`` is not
implemented). The ResNet arm has no norm placement of its own to vary (its BatchNorms are measured
on batch statistics) and no Pre/Post comparison enters H7 from it. The ``predicted`` arm is one
exploratory schedule: no verdict is drawn from it.

**Cost.** :func:`configs` lists 21 runs at the ``scale`` profile (6 Transformer arms x 3 seeds of
8 blocks, 400 steps, plus 3 ResNets of 2-2-2 blocks, 300 steps); one 8-block run with its held-out
gain samples took 39 s on one loaded CPU core, a ResNet 11 s. The design comparison adds up to 3
``predicted`` runs (300 steps, about 25 s each; none where the predicted widths are the primary's)
and reads the primary / narrow runs from the cache. About 8-10 minutes on 2 idle cores; the first
scale run took 27 minutes on 2 cores shared with the scale study's training.

**What the scale profile shows** (8 blocks, 0.41 M parameters, about 1 token per parameter; 3
seeds; errors are means over seeds; :mod:`experiments.verdicts.prediction` has the verdicts). On
Pre-LN the product with norm gains has error 0.49 with gains at initialization, 0.48 over the first
1 %, 0.45 over 5 %, 0.31 over 25 % and 0.28 averaged over training (counts: 0.71): the profile is
not yet predictable before training, and early gains are worse than the training-averaged ones
beyond the margin on Pre-LN, Peri-LN, LayerNorm Scaling and the ResNet (H6 does not hold). Under
Post-LN and DeepNorm it goes the other way: the norm gains measured at initialization (errors 0.89
and 0.94, against 1.39 and 5.8 without norm gains) beat the training-averaged ones (2.08 and 1.71),
whose product over 16 positions no longer matches the U-shaped ``A``; over the first 5 % the
prediction follows its late rise (F14). Post-LN stays above Pre-LN (H7 does not hold: 1.80 [0.72,
2.88] with training-averaged gains, 0.39 [0.16, 0.62] at initialization). Peri-LN is predicted best
from 5 % of training on (0.14); for the ResNet the orthogonal limit fits best (0.12 at
initialization), the product poorly (0.72). Design: at C8's default point the predicted schedule
rounds to exactly the fan-in taper's widths (same budget, FFN multiples of 32), so the two arms are
the same runs; both beat the narrow uniform model by 0.038 [0.027, 0.049] nats of held-out loss.

**Reading the result.** ``errors``: one row per run, window, account and norm setting;
``summary``: per (arm, window, account, norm setting) the mean error with its t-interval over
seeds (key: ``arm``, ``setting`` = window, ``quantity`` = account, ``subset`` = with / without
norms); ``units``: per branch of every run, ``A`` and each prediction (normalized);
``profiles``: per arm, the trained profile of ``A`` (mean over seeds) beside the prediction of its
best early window (F14, left); ``runs``: per run, parameters, tokens, validation loss;
``design``: the CascadeFormer runs (held-out loss) and their paired comparison rows in
``summary`` (``setting`` = ``design``). F14 draws the profiles and the error against the window
the gains were measured in; :mod:`experiments.verdicts.prediction` judges H6 and H7.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import pandas as pd

from gfa_theory.errors import ConfigError
from gfa_theory.instrument import importance
from gfa_theory.instrument.gains import (early_gain_steps, heldout_gains, predict_profile, unit_profile,
                                         window_steps)
from gfa_theory.methods import taper
from gfa_theory.methods.taper import PredictConfig
from gfa_theory.theory.gains import ACCOUNTS, log_profile_error
from gfa_theory.train.data import load_data, run_eval_batches
from gfa_theory.train.lifecycle import RunResult
from gfa_theory.train.loop import GAIN_PROBES, HELDOUT_GAIN_BATCHES, HELDOUT_GAINS_FILE
from gfa_theory.train.store import load_run

from . import cascadeformer as cf
from .mechanism import deepnorm_alpha
from .plans import StudyPlan, gpt_run, plan, resnet_run
from .runner import Context, map_in_workers, run_many
from .study_io import finish
from .summary import mean_row, paired_row, table
from .units import heldout_batches, unit_table

NAME = "prediction"
FIGURE_PROFILES = ("scale", "full", "smoke")  # the profiles whose `python -m figures` runs this study
# the StudyPlan whose model size, steps and seeds each profile trains (scale: the default size;
# the default profile itself has no room for this study in its 30-minute budget)
SIZES = {"scale": "default", "full": "full", "smoke": "smoke"}

# arm -> GPTConfig.norm (None: Pre-LN). DeepNorm's alpha is set from the depth.
ARMS: dict[str, dict | None] = {
    "pre": None,
    "post": {"placement": "post"},
    "peri": {"placement": "peri"},
    "mix": {"placement": "mix"},
    "deepnorm": {"placement": "post", "alpha": None},
    "ln_scaling": {"depth_scaling": True},
}
RESNET_ARM = "resnet"
# the early windows: the first fraction of training whose held-out gains are averaged
FRACTIONS = {"init": 0.0, "1%": 0.01, "5%": 0.05, "25%": 0.25}
SAMPLES = 4  # held-out gain samples spread over each early window
WINDOWS = (*FRACTIONS, "training", "final")
NORM_SETTINGS = {"with_norms": True, "without_norms": False}
PREDICTED = "predicted"  # the design arm: widths from the profile predicted before training
DESIGN_AGAINST = (cf.PRIMARY, cf.CONTROL)


def study_plan(profile: str) -> StudyPlan:
    """The StudyPlan this study trains at for ``profile`` (:data:`SIZES`)."""
    if profile not in SIZES:
        raise ConfigError(f"the prediction study has no '{profile}' profile (choices: {', '.join(SIZES)}): "
                          f"the default profile's budget is full; run it with --profile scale")
    return plan(SIZES[profile])


def gain_steps(steps: int, every: int) -> tuple[int, ...]:
    """Every held-out gain sample a run of ``steps`` needs: the early windows' and every ``every`` steps."""
    return tuple(sorted(set(early_gain_steps(steps, tuple(FRACTIONS.values()), SAMPLES)) | set(range(0, steps, every))))


def window_of(window: str, steps: int, every: int) -> list[int] | None:
    """The sample steps a window averages (None: the final model, measured after training)."""
    if window in FRACTIONS:
        return window_steps(steps, FRACTIONS[window], SAMPLES)
    if window == "training":
        return list(range(0, steps, every))
    return None


def _with_gains(cfg, every: int):
    t = cfg.train
    return dataclasses.replace(cfg, train=dataclasses.replace(t, heldout_gain_steps=gain_steps(t.steps, every)))


def configs(profile: str) -> list[tuple[dict, object]]:
    """(descriptors, RunConfig): every placement arm at the middle depth and the ResNet at the middle
    stage depth, each seed, with held-out gains sampled at :func:`gain_steps`."""
    p = study_plan(profile)
    every = p.train.gain_every
    B = p.depths[len(p.depths) // 2]
    out = []
    for arm, norm in ARMS.items():
        if norm is not None and norm.get("alpha", 1.0) is None:
            norm = {**norm, "alpha": deepnorm_alpha(B)}
        kw = {} if norm is None else {"norm": norm}
        for seed in p.seeds:
            out.append(({"family": "transformer", "arm": arm, "depth_B": B},
                        _with_gains(gpt_run(p, n_blocks=B, seed=seed, **kw), every)))
    bps = list(p.resnet_depths[len(p.resnet_depths) // 2])
    for seed in p.seeds:
        out.append(({"family": "resnet", "arm": RESNET_ARM, "depth_B": sum(bps)},
                    _with_gains(resnet_run(p, blocks_per_stage=bps, seed=seed), every)))
    return out


# ---- one run: every window x account x norm setting against A ----------------------------------

def final_gains(run: RunResult) -> pd.DataFrame:
    """The final model's held-out gains, on the batches (and with the probes) its training samples used."""
    cfg = run.config
    batches = list(run_eval_batches(load_data(cfg.data), cfg, "val",
                                    n_batches=cfg.train.heldout_gain_batches or HELDOUT_GAIN_BATCHES))
    steps = cfg.train.steps
    return heldout_gains(run.model, batches, GAIN_PROBES, cfg.train.seed + steps, step=steps)


def analyze_run(desc: dict, run_dir: str, every: int) -> dict[str, pd.DataFrame]:
    """Per window, account and norm setting: the predicted branch profile and its error against
    the trained A (a worker task)."""
    cfg, model, metrics, gradients = load_run(Path(run_dir))
    run = RunResult(Path(run_dir), cfg, model, metrics, gradients, trained=False)
    sampled = pd.read_csv(run.run_dir / HELDOUT_GAINS_FILE)
    table_ = pd.concat([sampled, final_gains(run).assign(run_id=run.run_dir.name, seed=cfg.train.seed)],
                       ignore_index=True)
    units = unit_table(run, "branch", **desc)
    A = units["A"].to_numpy(float)
    steps = cfg.train.steps
    base = {"run_id": run.run_dir.name, "seed": cfg.train.seed, **desc}
    err_rows, unit_rows = [], []
    for window in WINDOWS:
        at = window_of(window, steps, every)
        at = [steps] if at is None else at
        for setting, norms in NORM_SETTINGS.items():
            preds = predict_profile(model, table_, norms=norms, steps=at)
            for acc in ACCOUNTS:
                if acc == "counts" and norms:
                    continue  # counts use no gains: one row per window
                pred = unit_profile(model, preds[acc], "branch")
                err_rows.append({**base, "window": window, "account": acc, "norms": setting,
                                 "log_error": log_profile_error(pred, A)})
                unit_rows.append(pd.DataFrame({**base, "window": window, "account": acc, "norms": setting,
                                               "order": units["order"], "depth": units["depth"],
                                               "A_norm": A / A.mean(), "pred_norm": pred / pred.mean()}))
    val = metrics[metrics["split"] == "val"]
    params = sum(q.numel() for q in model.parameters())
    tokens = steps * cfg.train.batch_size * (cfg.model.block_size if desc["family"] == "transformer" else 1)
    row = {**base, "params": params, "steps": steps, "tokens": tokens,
           "tokens_per_param": tokens / params if desc["family"] == "transformer" else math.nan,
           "val_loss": float(val["loss"].iloc[-1]) if len(val) else math.nan}
    return {"errors": pd.DataFrame(err_rows), "units": pd.concat(unit_rows, ignore_index=True),
            "runs": pd.DataFrame([row])}


def summarize(errors: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, window, account, norm setting): the mean profile error with its t-interval over seeds."""
    rows = []
    for (arm, window, acc, setting), d in errors.groupby(["arm", "window", "account", "norms"], sort=False):
        rows.append(mean_row(f"{arm}, {window} gains, {acc} ({setting.replace('_', ' ')}): profile error",
                             d["log_error"], family=d["family"].iat[0], arm=arm, setting=window, quantity=acc,
                             subset=setting))
    return table(rows)


def best_early(errors: pd.DataFrame, account: str = "product", norms: str = "with_norms") -> dict[str, str]:
    """Per arm, the early window (:data:`FRACTIONS`) whose ``account`` has the smallest mean error."""
    d = errors[(errors["account"] == account) & (errors["norms"] == norms) & errors["window"].isin(list(FRACTIONS))]
    means = d.groupby(["arm", "window"], sort=False)["log_error"].mean()
    return {arm: str(m.idxmin()[1]) for arm, m in means.groupby(level="arm", sort=False)}


def profiles(units: pd.DataFrame, errors: pd.DataFrame, account: str = "product",
             norms: str = "with_norms") -> pd.DataFrame:
    """Per arm and branch: the trained profile of A (mean over seeds, normalized) beside the
    prediction of the arm's best early window and of the training-averaged gains."""
    best = best_early(errors, account, norms)
    rows = []
    u = units[(units["account"] == account) & (units["norms"] == norms)]
    for arm, d in u.groupby("arm", sort=False):
        for label, window in (("early", best[arm]), ("training", "training")):
            w = d[d["window"] == window].groupby("order", sort=True)
            m = w[["depth", "A_norm", "pred_norm"]].mean()
            rows.append(m.reset_index().assign(arm=arm, family=d["family"].iat[0], prediction=label, window=window,
                                               account=account, norms=norms))
    return pd.concat(rows, ignore_index=True)


# ---- from prediction to design: the predicted CascadeFormer arm ---------------------------------

def design_configs(p: StudyPlan) -> list[tuple[dict, object]]:
    """Per seed: the ``predicted`` arm (widths from :func:`~gfa_theory.methods.taper.predicted_profile`
    of the full uniform model initialized with that seed), then the primary and narrow arms of the
    cascadeformer study (its configs: cache hits)."""
    c = p.cascade
    out = []
    for seed in p.seeds:
        _, uniform = cf._run(p, cf.arm_plan(p, cf.REFERENCE), seed, c.steps)
        profile = taper.predicted_profile(uniform.model, PredictConfig(seed=seed))
        desc, cfg = cf._run(p, cf.arm_plan(p, cf.MEASURED, profile), seed, c.steps)
        out.append(({**desc, "label": PREDICTED, "profile": ",".join(f"{v:.6g}" for v in profile)}, cfg))
        for s in DESIGN_AGAINST:
            out.append(cf._run(p, cf.arm_plan(p, s), seed, c.steps))
    return out


def design(p: StudyPlan, runs: list, results: list[RunResult]) -> tuple[pd.DataFrame, list[dict]]:
    """Held-out loss of every design run (the cascadeformer study's batches) and the paired
    comparisons ``predicted - primary`` and ``predicted - narrow`` (loss, t-interval over seeds)."""
    batches = heldout_batches(results[0], p.cascade.eval_batches, p.cascade.eval_batch_size)
    rows = []
    for (desc, cfg), res in zip(runs, results):
        loss = importance.evaluate(res.model, batches)
        m = cfg.model
        rows.append({"run_id": res.run_dir.name, "seed": cfg.train.seed, **desc, "val_loss": loss,
                     "val_ppl": math.exp(loss), "params": sum(q.numel() for q in res.model.parameters()),
                     "n_head": ",".join(map(str, m.n_head if isinstance(m.n_head, (list, tuple)) else [m.n_head] * m.n_blocks)),
                     "d_ff": ",".join(map(str, m.d_ff if isinstance(m.d_ff, (list, tuple)) else [m.d_ff] * m.n_blocks))})
    df = pd.DataFrame(rows)
    # the predicted widths can round to another arm's (same budget, FFN multiples of the quantum): then
    # both are one run (one config hash), and the paired difference is exactly 0
    runs_of = {lab: set(d["run_id"]) for lab, d in df.groupby("label")}
    df["same_run_as"] = [",".join(a for a in DESIGN_AGAINST if r in runs_of.get(a, ())) if lab == PREDICTED else ""
                         for lab, r in zip(df["label"], df["run_id"])]
    by = {lab: d.set_index("seed")["val_loss"] for lab, d in df.groupby("label")}
    out = []
    for against in DESIGN_AGAINST:
        seeds = sorted(set(by[PREDICTED].index) & set(by[against].index))
        r = paired_row(f"{PREDICTED} - {against}: held-out loss", by[PREDICTED][seeds], by[against][seeds],
                       method="paired t over seeds (exploratory)")
        same = runs_of[PREDICTED] & runs_of[against]
        out.append({**r, "family": "transformer", "setting": "design", "quantity": "loss_gap", "arm": PREDICTED,
                    "against": against, "subset": "same runs" if same == runs_of[PREDICTED] else "all",
                    "predictor": "", "m": math.nan, "n_groups": r["n"]})
    return df, out


def run(profile: str = "scale", ctx: Context | None = None) -> pd.DataFrame:
    """Train (or read back) every arm and the design runs, score every window x account, write."""
    ctx = ctx or Context(profile)
    started = time.time()
    p = study_plan(ctx.profile)
    runs = configs(ctx.profile)
    results = run_many([c for _, c in runs], ctx, desc=NAME)
    every = p.train.gain_every
    parts = map_in_workers(analyze_run, [(d, str(r.run_dir), every) for (d, _), r in zip(runs, results)], ctx,
                           desc=NAME, labels=[f"analysis of run {r.run_dir}" for r in results])
    errors, units, per_run = (pd.concat([x[k] for x in parts], ignore_index=True) for k in ("errors", "units", "runs"))
    d_runs = design_configs(p)
    d_results = run_many([c for _, c in d_runs], ctx, desc=f"{NAME} (design)")
    design_runs, design_rows = design(p, d_runs, d_results)
    summary = pd.concat([summarize(errors), table(design_rows)], ignore_index=True)
    meta = {"sizes_of": SIZES[ctx.profile], "windows": {w: window_of(w, p.train.steps, every) for w in WINDOWS[:-1]},
            "resnet_windows": {w: window_of(w, p.resnet.steps, every) for w in WINDOWS[:-1]},
            "accounts": list(ACCOUNTS), "design_predict": dataclasses.asdict(PredictConfig()),
            "trained_here": sum(r.trained for r in results + d_results)}
    return finish(ctx, NAME, errors, summary, results + d_results, started, main_table="errors", meta=meta,
                  units=units, runs=per_run, profiles=profiles(units, errors), design=design_runs)
