"""Study 5 — CascadeFormer: do Transformers whose width shrinks with depth lose anything?

**Hypothesis (GFA: width where the gradient is).** A block's gradient fan-in falls with depth
(``F(b)`` of :mod:`gfa_theory.theory.symbolic`), so late blocks receive fewer gradient paths and, by the
fan-in account, contribute less. Giving them fewer attention heads and a narrower FFN (the
residual width stays constant, so every identity path stays exact) should cost little loss while
saving parameters, FLOPs and time.

**Prediction (the paper's claim).** At the same depth and training budget, a tapered model reaches
a perplexity comparable to the uniform model's while cutting latency by 8.6 % and raising
throughput by 9.4 %.

**Method.** Character-level Transformers of one depth (``cascade.depth`` blocks), every schedule of
:mod:`gfa_theory.methods.taper` (uniform, linear, fan-in-proportional ``max(r, F(b)/F(1))``, cosine, step)
with a sweep of the taper strength ``r`` (the last block's width multiplier), sizes rounded to
whole heads and FFN multiples of ``cascade.quantum``. Every model trains with the same budget:
the same steps, batch, token stream (per seed), optimizer, learning rate and schedule; the
profile's seeds (3 in ``default``). After training: held-out loss and perplexity on fixed
validation batches (the same for every model), parameters, analytic forward FLOPs per token.
Speed: one trained model per schedule (the first seed's; speed depends on the architecture, not
on the weights) is timed with every other one in one process, interleaved, median of repeats
after warm-up, with a fixed torch thread count (:mod:`gfa_theory.methods.taper_timing`): latency is a
forward pass at batch 1 and the full context, throughput the tokens per second of a forward pass
at a large batch. Ratios are per-repeat ratios against the uniform model (median and IQR). A
copy of the uniform model is timed alongside as an A/A control (``timing_summary.csv`` and
``meta.json``): its ratios should be 1 up to the timing noise.

**Reading the result.** ``summary`` has one row per schedule: perplexity (mean, 95 % t-interval
over seeds), the loss gap to uniform (paired by seed, t-interval) and the same gap as a perplexity
change in percent, params / FLOPs / latency / throughput ratios. This study computes numbers only:
what counts as *comparable* perplexity (a non-inferiority test at a declared margin) and as the
paper's speedup is decided by claim C8 in ``figures/claims.py``. CPU timing
of small models is noisy and overhead-bound at batch 1: read the IQR columns, and expect the
batch-1 latency to follow the FLOPs ratio far less than the large-batch throughput does.

Table T1 prints the summary row by row. Figure F8's CascadeFormer panels plot the perplexity gap
to uniform (with its interval) against the throughput ratio, with C8's margin and the paper's
point marked (a schedule that matches the paper sits right of the paper's throughput line and
below the margin), and the latency and throughput ratios per schedule with their IQR against the
paper's lines.
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
from gfa_theory.methods.taper_timing import TimingConfig, time_models, timing_summary
from gfa_theory.train.data import load_data
from gfa_theory.train.loop import RunResult

from .plans import StudyPlan, TaperSpec, gpt_run, plan
from .runner import Context, start
from .study_io import finish
from .summary import without_single_interval
from .units import heldout_batches

NAME = "cascadeformer"
AA_CONTROL = "uniform (A/A copy)"  # timed as a noise control, not a schedule


# ---- schedules ---------------------------------------------------------------------------------

def schedule_label(spec: TaperSpec) -> str:
    """``uniform``, ``linear r=0.5``, ``fanin r=0.25``, ``fanin r=0.5 a=2``, ``step r=0.5 at=0.5``."""
    s = spec.schedule
    if s == "uniform":
        return s
    label = f"{s} r={spec.r:g}"
    if s == "fanin" and spec.alpha != 1.0:
        label += f" a={spec.alpha:g}"
    if s == "step" and spec.step_at != 0.5:
        label += f" at={spec.step_at:g}"
    return label


def taper_plans(profile: str) -> dict[str, TaperPlan]:
    """The rounded per-block widths of every schedule of the profile, by label (uniform first)."""
    p = plan(profile)
    m, c = p.model, p.cascade
    vocab = load_data(gpt_run(p, n_blocks=1, seed=0).data).vocab_size  # for params / FLOPs only
    base = TaperConfig(B=c.depth, n_embd=m.n_embd, n_head=m.n_head, d_ff=m.d_ff, quantum=c.quantum,
                       vocab_size=vocab, block_size=m.block_size)
    plans: dict[str, TaperPlan] = {}
    for spec in c.schedules:
        label = schedule_label(spec)
        if label in plans:
            raise ConfigError(f"cascade schedule '{label}' is listed twice")
        plans[label] = taper.plan(replace(base, **spec.fields()))
    if "uniform" not in plans:
        raise ConfigError("the cascade schedules must include the uniform baseline")
    return {"uniform": plans.pop("uniform"), **plans}


def configs(profile: str) -> list[tuple[dict, object]]:
    """(descriptors, RunConfig) of every run: each schedule x seed, one training budget."""
    p = plan(profile)
    budget = replace(p, train=replace(p.train, steps=p.cascade.steps))
    out = []
    for label, tp in taper_plans(profile).items():
        c = tp.config
        desc = {"schedule": c.schedule, "label": label, "r": c.r if c.schedule != "uniform" else 1.0,
                "alpha": c.alpha, "step_at": c.step_at, "depth_B": c.B}
        overrides = tp.model_overrides()
        overrides.pop("n_blocks")
        for seed in p.seeds:
            if c.schedule == "uniform":  # the plain config: shared with other studies' runs
                cfg = gpt_run(budget, n_blocks=c.B, seed=seed)
            else:
                cfg = gpt_run(budget, n_blocks=c.B, seed=seed, **overrides)
            out.append((desc, cfg))
    return out


# ---- measurement -------------------------------------------------------------------------------

def summarize(runs: pd.DataFrame, timing: pd.DataFrame) -> pd.DataFrame:
    """One row per schedule: loss/perplexity over seeds, paired gaps to uniform, cost ratios."""
    base = runs[runs.schedule == "uniform"].set_index("seed")
    tim = timing.set_index("model")
    rows = []
    for label, d in runs.groupby("label", sort=False):
        d = d.set_index("seed")
        seeds = sorted(set(d.index) & set(base.index))
        first = d.iloc[0]
        row = {"label": label, "schedule": first.schedule, "r": first.r, "n_seeds": len(d),
               "params": int(first.params), "params_ratio": first.params / base["params"].iloc[0],
               "flops_per_token": first.flops_per_token,
               "flops_ratio": first.flops_per_token / base["flops_per_token"].iloc[0]}
        for col in ("val_loss", "val_ppl"):
            m, lo, hi = stats.mean_ci(d[col])
            row.update({col: m, f"{col}_ci_low": lo, f"{col}_ci_high": hi})
        gap = stats.paired_difference(d.loc[seeds, "val_loss"], base.loc[seeds, "val_loss"])
        if label != "uniform":  # uniform's gap to itself is exactly 0, even from one seed
            gap = without_single_interval(gap)
        row.update(loss_gap=gap["estimate"], loss_gap_ci_low=gap["ci_low"], loss_gap_ci_high=gap["ci_high"],
                   loss_gap_p=gap["p"])
        # the loss is log-perplexity: a loss gap g is a perplexity ratio exp(g)
        for k in ("", "_ci_low", "_ci_high"):
            row[f"ppl_gap_pct{k}"] = 100 * math.expm1(row[f"loss_gap{k}"])
        t = tim.loc[label]
        for col in ("latency_ms", "latency_ratio", "latency_ratio_q25", "latency_ratio_q75", "throughput_tok_s",
                    "throughput_ratio", "throughput_ratio_q25", "throughput_ratio_q75"):
            row[col] = float(t[col])
        rows.append(row)
    return pd.DataFrame(rows)


def evaluate_runs(runs: list[tuple[dict, object]], results: list[RunResult], plans: dict[str, TaperPlan],
                  batches: list) -> tuple[pd.DataFrame, dict]:
    """One row per run: held-out loss and perplexity on ``batches`` (the same tokens for every
    model), parameters, FLOPs and training budget; and the model of each schedule's first seed
    (what is timed: speed depends on the architecture, not on the weights)."""
    rows, timed = [], {}
    for (desc, cfg), res in zip(runs, results):
        p = plans[desc["label"]]
        model = res.model
        loss = importance.evaluate(model, batches)
        rows.append({"run_id": res.run_dir.name, "seed": cfg.train.seed, **desc,
                     "params": sum(q.numel() for q in model.parameters()), "params_analytic": p.params(),
                     "flops_per_token": p.flops_per_token(), "val_loss": loss, "val_ppl": math.exp(loss),
                     "steps": cfg.train.steps, "batch_size": cfg.train.batch_size,
                     "tokens": cfg.train.steps * cfg.train.batch_size * cfg.model.block_size,
                     "optimizer": cfg.train.optimizer, "lr": cfg.train.lr, "quantum": p.config.quantum,
                     "head_dim": p.head_dim, "n_head": ",".join(map(str, p.n_head)),
                     "d_ff": ",".join(map(str, p.d_ff))})
        timed.setdefault(desc["label"], model)  # first seed of each schedule
    return pd.DataFrame(rows), timed


def time_schedules(timed: dict, vocab_size: int, p: StudyPlan) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every schedule's model timed interleaved with the others, plus an A/A control: a copy of the
    uniform model timed like the others, whose ratios (ideally 1) show the timing noise and any
    position bias of the interleaving. Returns the raw timings and their per-model summary."""
    timed = {**timed, AA_CONTROL: copy.deepcopy(timed["uniform"])}
    tcfg = TimingConfig(context=p.model.block_size, **p.cascade.timing.fields())
    times = time_models(timed, vocab_size, tcfg)
    return times, timing_summary(times, baseline="uniform")


def width_table(plans: dict[str, TaperPlan]) -> pd.DataFrame:
    """Heads and FFN width of every block of every schedule."""
    return pd.DataFrame([{"label": label, "schedule": tp.config.schedule, "r": tp.config.r, **r}
                         for label, tp in plans.items() for r in tp.rows()])


def run(profile: str = "default", ctx: Context | None = None) -> pd.DataFrame:
    """Train (or read back) every schedule x seed, score and time them, summarize, write."""
    ctx, started, p, runs, results = start(NAME, configs, profile, ctx)
    plans = taper_plans(ctx.profile)
    batches = heldout_batches(results[0], p.cascade.eval_batches, p.cascade.eval_batch_size)
    table, timed = evaluate_runs(runs, results, plans, batches)
    times, tsum = time_schedules(timed, results[0].config.model.vocab_size, p)
    summary = summarize(table, tsum)
    aa = tsum.set_index("model").loc[AA_CONTROL]
    meta = {"timing": {**p.cascade.timing.fields(), "context": p.model.block_size,
                       "threads": int(times["threads"].iloc[0])},
            "depth_B": p.cascade.depth, "steps": p.cascade.steps,
            "aa_control": {k: float(aa[k]) for k in ("latency_ratio", "latency_ratio_q25", "latency_ratio_q75",
                                                     "throughput_ratio", "throughput_ratio_q25",
                                                     "throughput_ratio_q75")}}
    return finish(ctx, NAME, table, summary, results, started, main_table="runs", meta=meta,
                  schedules=width_table(plans), timing=times, timing_summary=tsum)
