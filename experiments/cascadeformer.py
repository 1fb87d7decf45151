"""Study 5 — CascadeFormer: is narrowing late blocks (by gradient fan-in) better than shrinking uniformly?

**Hypothesis (GFA: width where the gradient is).** A block's gradient fan-in falls with depth
(``F(b)`` of :mod:`gfa_theory.theory.symbolic`), so late blocks receive fewer gradient paths and, by
the fan-in account, contribute less. Giving them fewer attention heads and a narrower FFN (the
residual width stays constant, so every identity path stays exact) should cost little loss while
saving parameters, FLOPs and time; and, if fan-in is the reason, *where* the width is removed must
matter: the same budget spent uniformly should do worse.

**Prediction (the paper's claim, and what separates it from its rival).** At the same depth and
training budget, the fan-in-tapered model reaches a perplexity comparable to the full uniform
model's while cutting latency by 8.6 % and raising throughput by 9.4 %. The rival: any smaller
model trains faster in a short run (here ~1 token per parameter), so a saving alone proves
nothing; the fan-in taper must also beat a uniformly narrowed model of the same size.

**Method.** Character-level Transformers of ``cascade.depth`` blocks. One primary schedule is
declared in code before any result (:data:`PRIMARY`: ``fanin``, ``s_b = max(r, F(b)/F(1))`` at the
plan's ``primary.r``); its parameter count fixes *one* budget (``cascade.budget``: parameters, the
capacity the rival explains the result by; FLOPs per token follow within ~1 %, both reported) and
every other arm is matched to it with :func:`gfa_theory.methods.taper.match` (the nearest rounded
plan: whole heads and FFN multiples of ``cascade.quantum``; each arm's achieved ratio is in the
table). Arms: the full uniform model (the reference), the **narrow uniform** model (the same depth,
every block uniformly smaller: the control), the primary, and exploratory schedules (the
plan's ``exploratory``; ``linear`` only in ``smoke`` and ``full``, cut from ``default`` for its
30-minute budget) — ``linear``, ``inverse`` (widening with depth, OpenELM / DeLighT's layer-wise scaling: the opposite
of the fan-in prediction) and ``measured`` (data-driven: ``s_b = max(r, (A_b/max A)^alpha)`` from the
accumulated training gradient ``A`` of each block of the full uniform run of the same seed and
length, trained first; ``gfa taper --from-run RUN_DIR`` gives the same schedule for any finished
run). Every arm trains the same steps, batch, token stream (per seed), optimizer and schedule on
the profile's seeds. A **token sweep** retrains the full uniform, the narrow uniform and the
primary for ``sweep_factor`` x the steps (``sweep_seeds``; one seed in ``default``: 2 CPU cores
cannot train ~20 tokens per parameter, so the sweep shows whether the ranking moves as training
lengthens). After training: held-out loss and perplexity on fixed validation batches (the same
for every model), parameters, analytic FLOPs per token, tokens per parameter. Speed
(:mod:`gfa_theory.methods.taper_timing`): each arm's first-seed model, timed in one process,
interleaved, median of repeats after warm-up, with a fixed torch thread count: latency (batch 1)
and throughput (a fixed batch) of inference *and* of a training step (forward, backward, AdamW),
each as per-repeat ratios against the full uniform model (median, IQR).

**Controls (the rival each rules out).** *Narrow uniform at the same budget*: "a smaller model
wins a short run" (the decisive test: primary vs narrow, paired by seed). *Inverse taper*: "any
non-uniform allocation helps" (width against the gradient). *Measured schedule*: "the symbolic
fan-in is a poor stand-in for the gradient actually received". *Token sweep*: "the ranking is an
artefact of under-training". *A/A timing control* (a copy of the uniform model timed alongside):
"the speedup is timing noise or a position bias of the interleaving" — a speed ratio counts only
beyond the A/A IQR. *One declared primary*: "the winner is the best of many" (the others are
exploratory, Holm-adjusted, not counted).

**Reading the result.** ``summary`` has one row per arm and training length (main first, then the
sweep): role, params / FLOPs ratios, tokens per parameter, perplexity (mean, 95 % t-interval over
seeds), the loss gap to the full uniform and to the narrow uniform model (paired by seed,
t-interval; none from one seed) and as perplexity changes in percent, and the four speed ratios
with their IQR beside the A/A control's (``aa_*`` columns). This study computes numbers only: what
counts as comparable, better than narrow, or a speedup is decided by claim C8 in
``experiments/verdicts/``. If the primary beats the narrow model, where the width goes matters; if
the narrow model is as good, the saving is explained by size and the fan-in rationale is not
supported, whatever the gap to the full model. CPU timing of small models is noisy and
overhead-bound at batch 1: expect the batch-1 latency to follow the FLOPs ratio far less than the
batched throughput does, and read every ratio against the A/A band.

Table T1 prints the summary row by row with the A/A row last. Figure F8's two panels plot the perplexity change against the throughput ratio (A/A band shaded, the token sweep as
hollow markers) and, per arm, perplexity vs full and narrow uniform and the four speed ratios
with the A/A IQR ticks and the paper's lines.
"""
from __future__ import annotations

import copy
import math
from dataclasses import replace

import pandas as pd

from gfa_theory.errors import ConfigError
from gfa_theory.instrument import importance, stats
from gfa_theory.methods import taper
from gfa_theory.methods.taper import TaperConfig, TaperPlan
from gfa_theory.methods.taper_timing import MODES, TimingConfig, time_models, timing_summary
from gfa_theory.train.data import load_data
from gfa_theory.train.lifecycle import RunResult

from .plans import StudyPlan, gpt_run, plan
from .runner import Context, run_many, start
from .study_io import finish
from .summary import without_single_interval
from .units import heldout_batches

NAME = "cascadeformer"
AA_CONTROL = "uniform (A/A copy)"  # timed as a noise control, not a schedule
# Declared before any result was read: the one schedule C8 judges. Width follows the gradient
# fan-in F(b) (the paper's rationale); its size is the budget every other arm is matched to.
PRIMARY = "fanin"
REFERENCE, CONTROL, MEASURED = "uniform", "narrow", "measured"
ROLES = {REFERENCE: "reference", CONTROL: "control", PRIMARY: "primary"}  # the rest: exploratory


def role(schedule: str) -> str:
    return ROLES.get(schedule, "exploratory")


# ---- arms --------------------------------------------------------------------------------------

def base_config(p: StudyPlan) -> TaperConfig:
    m, c = p.model, p.cascade
    vocab = load_data(gpt_run(p, n_blocks=1, seed=0).data).vocab_size  # for params / FLOPs only
    return TaperConfig(B=c.depth, n_embd=m.n_embd, n_head=m.n_head, d_ff=m.d_ff, quantum=c.quantum,
                       vocab_size=vocab, block_size=m.block_size)


def primary_plan(p: StudyPlan) -> TaperPlan:
    if p.cascade.primary.schedule != PRIMARY:
        raise ConfigError(f"the plan's primary schedule must be the declared {PRIMARY!r}, "
                          f"got {p.cascade.primary.schedule!r}")
    return taper.plan(replace(base_config(p), **p.cascade.primary.fields()))


def budget_target(p: StudyPlan) -> float:
    """The primary schedule's params (or FLOPs) over the full uniform model's: every arm's budget."""
    return taper.budget_ratio(primary_plan(p), p.cascade.budget)


def arm_plan(p: StudyPlan, schedule: str, profile: tuple[float, ...] | None = None) -> TaperPlan:
    """The widths of one arm: the full uniform reference, the primary, or a schedule matched to the
    primary's budget (nearest achievable: rounded widths move in steps; the ratio is reported)."""
    base = base_config(p)
    if schedule == REFERENCE:
        return taper.uniform_plan(base)
    if schedule == PRIMARY:
        return primary_plan(p)
    cfg = replace(base, schedule=schedule, profile=profile)
    if schedule in ("fanin", MEASURED):  # alpha is solved; the floor is the primary's
        cfg = replace(cfg, r=p.cascade.primary.r)
    return taper.match(cfg, budget_target(p), p.cascade.budget, nearest=True)


def schedules(profile: str) -> list[str]:
    """The arms of the main comparison, in table order."""
    c = plan(profile).cascade
    names = [REFERENCE, CONTROL, PRIMARY, *c.exploratory]
    if len(set(names)) != len(names):
        raise ConfigError(f"a cascade arm is listed twice: {', '.join(names)}")
    return names


def _run(p: StudyPlan, tp: TaperPlan, seed: int, steps: int, source: str = "") -> tuple[dict, object]:
    c = tp.config
    budget = replace(p, train=replace(p.train, steps=steps))
    desc = {"schedule": c.schedule, "label": c.schedule, "role": role(c.schedule),
            "r": c.r if c.schedule != REFERENCE else 1.0, "alpha": c.alpha, "depth_B": c.B,
            "arm": "main" if steps == p.cascade.steps else "sweep", "source_run": source}
    if c.schedule == REFERENCE:  # the plain config: shared with other studies' runs
        return desc, gpt_run(budget, n_blocks=c.B, seed=seed)
    overrides = tp.model_overrides()
    overrides.pop("n_blocks")
    return desc, gpt_run(budget, n_blocks=c.B, seed=seed, **overrides)


def configs(profile: str) -> list[tuple[dict, object]]:
    """(descriptors, RunConfig) of every run whose widths are known before training: the token
    sweep (longest first, for the worker pool) and each main arm x seed except the measured arm
    (its widths come from trained runs: :func:`measured_configs`)."""
    p = plan(profile)
    c = p.cascade
    out = []
    if c.sweep_factor > 1:
        for s in (REFERENCE, CONTROL, PRIMARY):
            tp = arm_plan(p, s)
            out += [_run(p, tp, seed, c.sweep_factor * c.steps) for seed in c.sweep_seeds]
    for s in schedules(profile):
        if s != MEASURED:
            tp = arm_plan(p, s)
            out += [_run(p, tp, seed, c.steps) for seed in p.seeds]
    return out


def measured_configs(p: StudyPlan, uniform: dict[int, RunResult]) -> list[tuple[dict, object]]:
    """The data-driven arm: per seed, widths from the accumulated training gradient A of each
    block of that seed's full uniform run (same budget), matched to the primary's budget."""
    out = []
    for seed in p.seeds:
        res = uniform[seed]
        profile = taper.gradient_profile(res.gradients, p.cascade.depth)
        out.append(_run(p, arm_plan(p, MEASURED, profile), seed, p.cascade.steps, source=res.run_dir.name))
    return out


# ---- measurement -------------------------------------------------------------------------------

def _gap(d: pd.DataFrame, ref: pd.DataFrame, same: bool) -> dict:
    """Paired (by seed) loss difference ``d - ref``; ``same``: the arm is the reference (exact 0)."""
    seeds = sorted(set(d.index) & set(ref.index))
    gap = stats.paired_difference(d.loc[seeds, "val_loss"], ref.loc[seeds, "val_loss"])
    return gap if same else without_single_interval(gap)


def summarize(runs: pd.DataFrame, timing: pd.DataFrame) -> pd.DataFrame:
    """One row per arm and training length: loss/perplexity over seeds, tokens per parameter,
    paired gaps to the full uniform and to the narrow uniform of the same length, cost ratios,
    speed ratios (median, IQR) and the A/A control's band on every row."""
    tim = timing.set_index("model")
    aa = tim.loc[AA_CONTROL] if AA_CONTROL in tim.index else None
    ratio_cols = [f"{m}_ratio{q}" for m in MODES for q in ("", "_q25", "_q75") if f"{m}_ratio" in tim.columns]
    rows = []
    ordered = runs.sort_values("steps", kind="stable")  # the main comparison first, then the token sweep
    for (steps, label), d in ordered.groupby(["steps", "label"], sort=False):
        d = d.set_index("seed")
        same_len = runs[runs.steps == steps]
        base = same_len[same_len.schedule == REFERENCE].set_index("seed")
        narrow = same_len[same_len.schedule == CONTROL].set_index("seed")
        first = d.iloc[0]
        full = runs[(runs.schedule == REFERENCE)].iloc[0]
        row = {"label": label, "schedule": first.schedule, "role": first.role, "arm": first.arm, "steps": int(steps),
               "r": first.r, "alpha": first.alpha, "n_seeds": len(d), "params": int(first.params),
               "params_ratio": d["params"].mean() / full["params"], "flops_per_token": first.flops_per_token,
               "flops_ratio": d["flops_per_token"].mean() / full["flops_per_token"],
               "tokens": int(first.tokens), "tokens_per_param": first.tokens / d["params"].mean()}
        for col in ("val_loss", "val_ppl"):
            m, lo, hi = stats.mean_ci(d[col])
            row.update({col: m, f"{col}_ci_low": lo, f"{col}_ci_high": hi})
        for suffix, ref, name in (("", base, REFERENCE), ("_narrow", narrow, CONTROL)):
            gap = _gap(d, ref, first.schedule == name) if len(ref) else \
                {"estimate": math.nan, "se": math.nan, "df": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                 "p": math.nan, "n": 0}
            row.update({f"loss_gap{suffix}": gap["estimate"], f"loss_gap{suffix}_ci_low": gap["ci_low"],
                        f"loss_gap{suffix}_ci_high": gap["ci_high"], f"loss_gap{suffix}_p": gap["p"],
                        f"loss_gap{suffix}_n": gap["n"], f"loss_gap{suffix}_se": gap["se"],
                        f"loss_gap{suffix}_df": gap["df"]})
            # the loss is log-perplexity: a loss gap g is a perplexity ratio exp(g)
            for k in ("", "_ci_low", "_ci_high"):
                row[f"ppl_gap{suffix}_pct{k}"] = 100 * math.expm1(row[f"loss_gap{suffix}{k}"])
        t = tim.loc[label]  # the architecture timed (first seed's; the same at every length)
        row.update({c: float(t[c]) for c in ratio_cols})
        if aa is not None:
            row.update({f"aa_{c}": float(aa[c]) for c in ratio_cols})
        rows.append(row)
    return pd.DataFrame(rows)


def evaluate_runs(runs: list[tuple[dict, object]], results: list[RunResult], plans: dict,
                  batches: list) -> tuple[pd.DataFrame, dict]:
    """One row per run: held-out loss and perplexity on ``batches`` (the same tokens for every
    model), parameters, FLOPs and training budget; and the model of each arm's first seed at the
    main length (what is timed: speed depends on the architecture, not on the weights).
    ``plans``: the TaperPlan of each run, by run directory name."""
    rows, timed = [], {}
    for (desc, cfg), res in zip(runs, results):
        p = plans[res.run_dir.name]
        model = res.model
        loss = importance.evaluate(model, batches)
        params = sum(q.numel() for q in model.parameters())
        tokens = cfg.train.steps * cfg.train.batch_size * cfg.model.block_size
        rows.append({"run_id": res.run_dir.name, "seed": cfg.train.seed, **desc,
                     "params": params, "params_analytic": p.params(), "flops_per_token": p.flops_per_token(),
                     "val_loss": loss, "val_ppl": math.exp(loss), "steps": cfg.train.steps,
                     "batch_size": cfg.train.batch_size, "tokens": tokens, "tokens_per_param": tokens / params,
                     "optimizer": cfg.train.optimizer, "lr": cfg.train.lr, "quantum": p.config.quantum,
                     "head_dim": p.head_dim, "n_head": ",".join(map(str, p.n_head)),
                     "d_ff": ",".join(map(str, p.d_ff))})
        if desc["arm"] == "main":
            timed.setdefault(desc["label"], model)  # first seed of each arm
    return pd.DataFrame(rows), timed


def time_schedules(timed: dict, vocab_size: int, p: StudyPlan) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every arm's model timed interleaved with the others in every mode (inference and training
    step, batch 1 and a fixed batch), plus an A/A control: a copy of the full uniform model timed
    like the others, whose ratios (ideally 1) show the timing noise and any position bias of the
    interleaving. Returns the raw timings and their per-model summary."""
    timed = {**timed, AA_CONTROL: copy.deepcopy(timed[REFERENCE])}
    tcfg = TimingConfig(context=p.model.block_size, **p.cascade.timing.fields())
    times = time_models(timed, vocab_size, tcfg)
    return times, timing_summary(times, baseline=REFERENCE)


def width_table(plans: dict[tuple[str, int], TaperPlan]) -> pd.DataFrame:
    """Heads and FFN width of every block of every arm (the measured arm: per seed)."""
    return pd.DataFrame([{"label": label, "seed": seed, "schedule": tp.config.schedule, "role": role(label),
                          "r": tp.config.r, "alpha": tp.config.alpha, **r}
                         for (label, seed), tp in plans.items() for r in tp.rows()])


def run(profile: str = "default", ctx: Context | None = None) -> pd.DataFrame:
    """Train (or read back) every arm x seed, then the measured arm from the uniform runs' gradients;
    score and time them, summarize, write."""
    ctx, started, p, runs, results = start(NAME, configs, profile, ctx)
    uniform = {cfg.train.seed: res for (d, cfg), res in zip(runs, results)
               if d["schedule"] == REFERENCE and d["arm"] == "main"}
    if MEASURED in p.cascade.exploratory:
        extra = measured_configs(p, uniform)
        runs, results = runs + extra, results + run_many([c for _, c in extra], ctx, desc=f"{NAME} (measured)")
    plans, widths = {}, {}
    for (desc, cfg), res in zip(runs, results):
        m = cfg.model
        tp = arm_plan(p, desc["schedule"], taper.gradient_profile(uniform[cfg.train.seed].gradients, p.cascade.depth)
                      if desc["schedule"] == MEASURED else None)
        if tp.n_head != tuple(m.n_head if isinstance(m.n_head, (list, tuple)) else [m.n_head] * m.n_blocks):
            raise ConfigError(f"run {res.run_dir.name} does not have the widths of arm {desc['label']}")
        plans[res.run_dir.name] = tp
        widths.setdefault((desc["label"], cfg.train.seed if desc["schedule"] == MEASURED else None), tp)
    batches = heldout_batches(results[0], p.cascade.eval_batches, p.cascade.eval_batch_size)
    table, timed = evaluate_runs(runs, results, plans, batches)
    times, tsum = time_schedules(timed, results[0].config.model.vocab_size, p)
    summary = summarize(table, tsum)
    aa = tsum.set_index("model").loc[AA_CONTROL]
    meta = {"timing": {**TimingConfig(context=p.model.block_size, **p.cascade.timing.fields()).__dict__,
                       "threads": int(times["threads"].iloc[0])},
            "depth_B": p.cascade.depth, "steps": p.cascade.steps, "primary": PRIMARY,
            "primary_r": p.cascade.primary.r, "budget": p.cascade.budget, "budget_target": budget_target(p),
            "sweep_steps": p.cascade.sweep_factor * p.cascade.steps, "sweep_seeds": list(p.cascade.sweep_seeds),
            "measured_source": "the full uniform run of the same seed (main length): block accumulated gradient A",
            "aa_control": {k: float(v) for k, v in aa.items() if k.endswith(("_ratio", "_q25", "_q75"))
                           and "ratio" in k}}
    meta["timing"]["modes"] = list(meta["timing"]["modes"])
    return finish(ctx, NAME, table, summary, results, started, main_table="runs", meta=meta,
                  schedules=width_table(widths), timing=times, timing_summary=tsum)
