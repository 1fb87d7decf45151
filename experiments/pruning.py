"""Study 6 — CascadeFlow Pruning: is the accumulated training gradient a good, stable pruning signal?

**Hypothesis (GFA).** A block's accumulated training gradient ``A = sum_t ||grad||`` follows its
gradient fan-in and is associated with its post hoc importance (what studies 1 and 2 test). If so,
the blocks with the smallest ``A`` are the ones a network misses least: ranking blocks by ``A``
("CascadeFlow") should prune as well as the post hoc heuristics, for free (``A`` is recorded
during ordinary training: no calibration data, no extra forward or backward pass), and its
ranking should be stable, because it integrates the whole of training rather than one snapshot of
the weights scored on a few calibration batches.

**Prediction (the paper's claim).** Removing the ``k`` blocks of smallest ``A`` gives a lower
held-out perplexity than the standard heuristics (Block Influence, angular distance of a
contiguous span, Taylor, weight magnitude, random, last-k), with a more stable layer ranking, and
a competitive downstream accuracy. The greedy ablation oracle (SLEB-style) is the reference every
method, CascadeFlow included, is expected to trail.

**Method.** No new training: the single-head Transformer runs of study 1 at ``prune.depths``
blocks and its digits ResNets at ``prune.resnet_depths`` (every profile seed) are read from the
result cache. For every run and method, blocks are ranked (CascadeFlow by ``A`` and by the
per-parameter ``A_rms``; the post hoc scorers on ``prune.calib_batches`` seeded batches of the
*training* split; ``random`` averaged over ``prune.random_draws`` seeded draws) and the ``k``
lowest physically removed, for ``k = 1 .. B/2`` (ResNet: half of the blocks with an identity
shortcut; projection blocks cannot go). Each pruned model is scored on fixed held-out batches
(the same for every method and seed: loss, perplexity = exp(loss), next-token accuracy or top-1),
then healed by ``prune.heal_steps`` seeded AdamW steps on training batches and scored again.
``k = 0`` (method ``none``) is the unpruned model, also healed, so the effect of healing alone is
visible. Rank stability of each method's full layer ranking is Kendall tau (and the overlap of the
``k`` lowest blocks, averaged over ``k = 1 .. K``) between

* (a) **seeds**: the models of every pair of training seeds (same architecture);
* (b) **calibration subsets**: ``prune.calib_subsets`` different calibration subsets, same model;
  CascadeFlow, magnitude and last use no calibration data, so they are identical by construction
  (tau = 1, flagged ``by_construction``): this is not evidence for them and no claim counts it;
* (c) **checkpoints**: the ranking at each earlier training checkpoint against the final one:
  CascadeFlow from ``A`` accumulated up to that step (the tracker's per-step ``grad_norm``
  series), the post hoc methods on the model-weight snapshot of that step. ``A`` up to a step is a
  prefix of the final sum, so part of its agreement is mechanical; read it as "would pruning early
  pick the same blocks", which is the practical question.

**Control: depth order.** ``A`` decays with depth (study 1 measures how closely it follows fan-in), so CascadeFlow's ranking is
close to "remove the last ``k``" (``last``), the ranking depth alone predicts. Last-k is therefore
the primary baseline of the claim, fixed before results are read (:data:`DEPTH_ORDER`). Per run:
Kendall tau between CascadeFlow's ranking and depth order (last block first); at each ``k``,
whether the two remove different blocks; and the held-out loss CascadeFlow minus last-k on exactly
the differing runs (pruned and healed; t-interval over those ``G`` runs, ``G - 1`` df). Where the
two never differ, the two methods pruned the same model: nothing there can separate CascadeFlow
from depth order.

``random`` uses a fresh draw in every comparison (the chance floor, tau near 0); ``last`` is the
same fixed order everywhere (tau = 1 by construction). Scoring cost is each method's extra
forward / backward passes over calibration batches and its wall time (one CPU thread).

**Reading the result.** ``results.csv``: one row per run, method, ``k`` and stage (``pruned`` /
``healed``), random averaged over draws (``raw.csv`` keeps every draw). ``stability.csv``: one row
per compared pair; ``stability_summary.csv`` its means per method and comparison. ``cost.csv``:
scoring cost per method. ``comparisons.csv``: CascadeFlow (``A``) minus every other method, paired
by seed (perplexity as the mean held-out loss over ``k``, accuracy at each ``k``) or by compared
pair (Kendall tau), with t-intervals; the claims C9-C11 of the report apply their stated rules to
these rows. ``depth_order_cases.csv``: one row per run, ``k`` and stage, CascadeFlow vs last-k (tau,
whether the removed sets differ, both losses); ``depth_order.csv``: per model, stage and ``k``, how
many runs differ and their loss difference. ``summary.csv``: one row per model and method (means over ``k`` and seeds).
"""
from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps

from gfa_theory.errors import ConfigError
from gfa_theory.instrument.evaluation import continuation_accuracy, continuation_items, evaluate
from gfa_theory.methods import pruning
from gfa_theory.models import build_model
from gfa_theory.train.data import load_data
from gfa_theory.train.store import load_run, load_weights, read_checkpoint, snapshots

from . import fanin_vs_gradients
from .plans import PrunePlan, plan
from .runner import Context, map_in_workers, start
from .study_io import finish
from .summary import paired_row
from .units import heldout_batches

NAME = "pruning"
# study methods: label -> (gfa_theory.methods.pruning method, gradient quantity)
VARIANTS: dict[str, tuple[str, str]] = {
    "cascadeflow": ("cascadeflow", "A"), "cascadeflow_rms": ("cascadeflow", "A_rms"),
    "bi": ("bi", "A"), "angular": ("angular", "A"), "taylor": ("taylor", "A"),
    "magnitude": ("magnitude", "A"), "random": ("random", "A"), "last": ("last", "A"),
    "ablation": ("ablation", "A")}
METHODS = tuple(VARIANTS)
CASCADEFLOW = "cascadeflow"  # the variant the claims test (A, the paper's signal)
HEURISTICS = ("bi", "angular", "taylor", "magnitude", "random", "last")  # what C9 must beat
# C9's primary baseline, fixed before any result is read: A decays with depth (fan-in), so ranking by A
# is close to removing the last k blocks; CascadeFlow adds something only where it picks other blocks
DEPTH_ORDER = "last"
ORACLE = "ablation"  # reported, not a heuristic to beat
# ranking does not read calibration data: identical across calibration subsets by construction
CALIBRATION_FREE = ("cascadeflow", "cascadeflow_rms", "magnitude", "last")
STAGES = ("pruned", "healed")
CONTEXTS = ("seeds", "calibration", "checkpoints")
CALIB_SEED, HEAL_SEED = 1000, 2000  # seeds of calibration subset j (CALIB_SEED + j) and healing batches
# C11's Transformer task (distinct from the training loss): in a window of the model's context length
# from the validation split, pick the true last quarter (CHOICE_FRACTION) after the first three
# quarters among CHOICES candidates (the others taken from elsewhere in the split) by total
# log-likelihood; chance = 1 / CHOICES
CHOICE_ITEMS, CHOICE_FRACTION, CHOICES, CHOICE_SEED = 256, 4, 4, 3000


# ---- rank-stability measures (pure) ---------------------------------------------------------

def _positions(a: Sequence[str], b: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if len(set(a)) != len(a) or set(a) != set(b) or len(a) != len(b):
        raise ConfigError(f"rankings must order the same blocks once each: {list(a)} vs {list(b)}")
    pos_b = {n: p for p, n in enumerate(b)}
    return np.arange(len(a)), np.array([pos_b[n] for n in a])


def kendall_tau(a: Sequence[str], b: Sequence[str]) -> float:
    """Kendall tau between two orderings of the same blocks (1 identical, -1 reversed, NaN for
    fewer than two blocks)."""
    x, y = _positions(a, b)
    if len(x) < 2:
        return float("nan")
    return float(sps.kendalltau(x, y).statistic)


def top_k_overlap(a: Sequence[str], b: Sequence[str], k: int) -> float:
    """Fraction of the ``k`` least important blocks (``order[:k]``, what pruning removes) the two
    rankings share."""
    _positions(a, b)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(a):
        raise ConfigError(f"k must be an integer in 1..{len(a)}, got {k!r}")
    return len(set(a[:k]) & set(b[:k])) / k


def mean_overlap(a: Sequence[str], b: Sequence[str], K: int) -> float:
    """:func:`top_k_overlap` averaged over ``k = 1 .. K`` (every pruning size of the study)."""
    return float(np.mean([top_k_overlap(a, b, k) for k in range(1, K + 1)]))


def gradients_until(gradients: pd.DataFrame, step: int) -> pd.DataFrame:
    """Block totals ``A`` and ``A_rms`` accumulated over optimizer steps ``1 .. step``.

    Built from the tracker's per-step series ``grad_norm`` (the mean of ``||g_t||`` over windows
    of ``series_every`` steps, stamped with each window's last step): each window contributes its
    mean times the number of its steps at or before ``step`` (exact at window ends; inside a window
    the window mean stands in for the steps). The result has the tracker frame's columns, so
    ``pruning.rank("cascadeflow", model, gradients=...)`` reads it like the final totals.
    """
    g = gradients[gradients["kind"] == "block"]
    series = g[g["quantity"] == "grad_norm"].dropna(subset=["step"])
    if series.empty:
        raise ConfigError("the gradients frame has no per-step 'grad_norm' series of blocks (train with "
                          "train.track=block or both)")
    numel = g[(g["quantity"] == "numel") & g["step"].isna()].set_index("unit")["value"].astype(float)
    last = int(series["step"].max())
    if isinstance(step, bool) or not 1 <= int(step) <= last:
        raise ConfigError(f"step must be in 1..{last} (the series' last step), got {step!r}")
    rows = []
    for unit, d in series.groupby("unit", sort=False):
        d = d.sort_values("step")
        ends = d["step"].to_numpy(dtype=np.int64)
        starts = np.concatenate([[0], ends[:-1]])
        covered = np.clip(int(step) - starts, 0, ends - starts)  # steps of each window up to `step`
        A = float((d["value"].to_numpy(float) * covered).sum())
        rows += [(unit, "block", "A", A), (unit, "block", "A_rms", A / math.sqrt(float(numel[unit])))]
    out = pd.DataFrame(rows, columns=["unit", "kind", "quantity", "value"])
    out["step"] = pd.array([pd.NA] * len(out), dtype="Int64")  # totals, like the tracker's
    return out


# ---- plan ----------------------------------------------------------------------------------------

def _label(family: str, B: int) -> str:
    return f"{family} B={B}"


def configs(profile: str) -> list[tuple[dict, object]]:
    """(descriptors, RunConfig) of the study-1 runs this study prunes: single-head Transformers at
    the prune plan's ``depths`` and ResNets at its ``resnet_depths``, every seed (the same configs,
    hence the same cached runs, as :mod:`experiments.fanin_vs_gradients`)."""
    p = plan(profile)
    depths, resnets = list(p.prune.depths), [list(b) for b in p.prune.resnet_depths]
    bad = ([B for B in depths if B not in p.depths]
           + [b for b in resnets if tuple(b) not in p.resnet_depths])
    if bad:
        raise ConfigError(f"pruning reuses study 1's runs: {bad[0]} is not among its depths "
                          f"({list(p.depths)}, {[list(b) for b in p.resnet_depths]})")
    out = []
    for desc, cfg in fanin_vs_gradients.configs(profile):
        if desc["supervision"] != "final":
            continue
        keep = (desc["depth_B"] in depths if desc["family"] == "transformer"
                else list(cfg.model.blocks_per_stage) in resnets)
        if keep:
            out.append(({"family": desc["family"], "depth_B": desc["depth_B"],
                         "model": _label(desc["family"], desc["depth_B"])}, cfg))
    return out


def _random_seed(run_seed: int, draw: int, subset: int = 0, step: int = 0) -> int:
    """A distinct, reproducible seed per (training seed, draw, calibration subset, checkpoint): a
    random ranking is never reused across a comparison (it is the chance floor)."""
    return int(np.random.SeedSequence([run_seed, draw, subset, step, 0x5EED]).generate_state(1)[0])


# ---- one run --------------------------------------------------------------------------------------

def _rank(variant: str, model, grads, batches, k: int | None = None, seed: int = 0) -> pruning.Ranking:
    method, quantity = VARIANTS[variant]
    return pruning.rank(method, model, gradients=grads if method == "cascadeflow" else None,
                        batches=batches if method in pruning.NEEDS_BATCHES else None,
                        k=k if method in ("angular", "ablation") else None, seed=seed, quantity=quantity)


def _stability_rankings(model, grads, batches, K: int, run_seed: int, draws: int, subset: int,
                        step: int, variants: Sequence[str]) -> list[dict]:
    """Each method's full ranking of the removable blocks in one context (angular: its per-block
    distances; ablation: the greedy order of ``K`` removals, then the last round's losses)."""
    rows = []
    for v in variants:
        for d in range(draws if v == "random" else 1):
            r = _rank(v, model, grads, batches, k=1 if v == "angular" else K,
                      seed=_random_seed(run_seed, d, subset, step))
            rows.append({"method": v, "draw": d, "subset": subset, "step": step, "order": ";".join(r.order)})
    return rows


def _final_rankings(model, grads, calib: list, K: int, seed: int, steps: int, draws: int,
                    base: dict) -> tuple[list[dict], list[dict], dict[tuple[str, int, int], list[str]]]:
    """Every method's ranking of the final model on calibration subset 0 (what pruning uses), its
    scoring cost, and the blocks each ``(method, k, draw)`` removes."""
    rankings, cost = [], []
    removal: dict[tuple[str, int, int], list[str]] = {}  # (method, k, draw) -> blocks removed
    for v in METHODS:
        for d in range(draws if v == "random" else 1):
            rseed = _random_seed(seed, d, 0, steps)
            if v == "angular":  # one contiguous span per k; its full ranking: the per-block distances
                for k in range(1, K + 1):
                    r = _rank(v, model, grads, calib, k=k)
                    removal[(v, k, d)] = r.lowest(k)
                order = _rank(v, model, grads, calib, k=1).order
            else:  # greedy ablation stops after K removals; every other order is k-independent
                r = _rank(v, model, grads, calib, k=K, seed=rseed)
                for k in range(1, K + 1):
                    removal[(v, k, d)] = r.lowest(k)
                order = r.order
            rankings.append({**base, "context": "final", "method": v, "draw": d, "subset": 0, "step": steps,
                             "order": ";".join(order)})
            # the cost of ranking for the largest k (ablation: K greedy rounds; angular: K-spans)
            cost.append({**base, "method": v, "draw": d, "forward_passes": r.cost.forward_passes,
                         "backward_passes": r.cost.backward_passes, "seconds": r.cost.seconds,
                         "calib_batches": len(calib) if VARIANTS[v][0] in pruning.NEEDS_BATCHES else 0})
    return rankings, cost, removal


def _context_rankings(run_dir: str, cfg, model, grads, calib: list[list], K: int, seed: int, steps: int,
                      draws: int, base: dict) -> list[dict]:
    """Rankings of the stability contexts (b) other calibration subsets of the same model and (c)
    earlier checkpoints: ``A`` up to the step, post hoc scores on that step's weights."""
    rankings = []
    for j in range(1, len(calib)):
        for row in _stability_rankings(model, grads, calib[j], K, seed, draws, j, steps, METHODS):
            rankings.append({**base, "context": "calibration", **row})
    for step, path in snapshots(run_dir).items():
        if step >= steps:
            continue
        snap = build_model(cfg.model_name, cfg.model)
        load_weights(snap, read_checkpoint(path, run=run_dir)["model"], path, "the run's model",
                     f"delete {run_dir} or retrain it with --force")
        snap.eval()
        for row in _stability_rankings(snap, gradients_until(grads, step), calib[0], K, seed, draws, 0, step,
                                       METHODS):
            rankings.append({**base, "context": "checkpoint", **row})
    return rankings


def choice_items(data, block_size: int, seed: int = CHOICE_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """C11's continuation items on the validation split
    (:func:`gfa_theory.instrument.evaluation.continuation_items` with this study's settings)."""
    return continuation_items(data.split("val"), block_size, CHOICE_ITEMS, CHOICE_FRACTION, CHOICES, seed)


def _prune_and_heal(model, removal: dict[tuple[str, int, int], list[str]], K: int, pp: PrunePlan,
                    heldout: list, heal_batches: list, seed: int, base: dict, choice=None) -> list[dict]:
    """Every method's pruned model at every ``k`` (and the unpruned one, ``none``), scored on the
    held-out batches before and after healing; a removal set shared by several methods is done once."""
    done: dict[tuple[str, ...], tuple] = {}

    def measure(remove: list[str]) -> tuple:
        key = tuple(sorted(remove))
        if key not in done:
            pruned = pruning.prune(model, remove) if remove else copy.deepcopy(model)
            before = evaluate(pruned, heldout)
            mc_before = continuation_accuracy(pruned, choice) if choice is not None else float("nan")
            pruning.heal(pruned, heal_batches, pp.heal_steps, pp.heal_lr, seed=seed)
            after = evaluate(pruned, heldout)
            mc_after = continuation_accuracy(pruned, choice) if choice is not None else float("nan")
            done[key] = (before, after, pruning.num_params(pruned), mc_before, mc_after)
        return done[key]

    evals = []
    todo = [("none", 0, 0, [])] + [(v, k, d, removal[(v, k, d)]) for v in METHODS
                                   for k in range(1, K + 1) for d in range(pp.random_draws if v == "random" else 1)]
    for v, k, d, remove in todo:
        before, after, params, mc_before, mc_after = measure(remove)
        for stage, e, mc in zip(STAGES, (before, after), (mc_before, mc_after)):
            evals.append({**base, "method": v, "k": k, "draw": d, "removed": ";".join(remove), "stage": stage,
                          "loss": e.loss, "perplexity": e.perplexity, "accuracy": e.accuracy,
                          "choice_accuracy": mc, "count": e.count, "params": params})
    return evals


def analyze_run(desc: dict, run_dir: str, profile: str) -> dict[str, list[dict]]:
    """Everything the study measures on one run: rankings (for stability), scoring cost, and the
    evaluations of every pruned (and healed) model. Rows of plain values (runs in worker processes)."""
    pp = plan(profile).prune
    cfg, model, _, grads = run = load_run(run_dir)
    seed, steps = cfg.train.seed, cfg.train.steps
    data = load_data(cfg.data)
    text = cfg.model_name == "gpt"
    heldout = heldout_batches(run, pp.eval_batches if text else pp.resnet_eval_batches, pp.eval_batch_size)
    calib = [pruning.calibration_batches(cfg, data, pp.calib_batches, seed=CALIB_SEED + j)
             for j in range(pp.calib_subsets)]
    heal_batches = pruning.calibration_batches(cfg, data, pp.heal_steps, seed=HEAL_SEED)
    names = pruning.removable_blocks(model)
    K = len(names) // 2
    if K < 1:
        raise ConfigError(f"{desc['model']} has {len(names)} removable block(s): nothing to prune")
    base = {"run_id": Path(run_dir).name, "seed": seed, **desc, "n_removable": len(names), "K": K,
            "heal_steps": pp.heal_steps}
    rankings, cost, removal = _final_rankings(model, grads, calib[0], K, seed, steps, pp.random_draws, base)
    rankings += _context_rankings(run_dir, cfg, model, grads, calib, K, seed, steps, pp.random_draws, base)
    choice = choice_items(data, cfg.model.block_size) if text else None
    evals = _prune_and_heal(model, removal, K, pp, heldout, heal_batches, seed, base, choice)
    return {"raw": evals, "rankings": rankings, "cost": cost}


def analyze_all(runs: list[tuple[dict, object]], results, ctx: Context) -> dict[str, pd.DataFrame]:
    """:func:`analyze_run` on every run, through the studies' executor; rows stacked per table."""
    tasks = [(desc, str(res.run_dir), ctx.profile) for (desc, _), res in zip(runs, results)]
    parts = map_in_workers(analyze_run, tasks, ctx, desc=f"{NAME}: score, prune, heal",
                           labels=[f"pruning of run {res.run_dir}" for res in results])
    return {name: pd.DataFrame([row for p in parts for row in p[name]]) for name in ("raw", "rankings", "cost")}

# ---- tables ----------------------------------------------------------------------------------------

RUN_KEYS = ["model", "family", "depth_B", "run_id", "seed"]


def aggregate_draws(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per run, method, k and stage: random's loss, perplexity and accuracy are the means
    over its draws (the expected value under a random pick)."""
    keys = RUN_KEYS + ["method", "k", "stage"]
    agg = raw.groupby(keys, sort=False).agg(
        loss=("loss", "mean"), perplexity=("perplexity", "mean"), accuracy=("accuracy", "mean"),
        choice_accuracy=("choice_accuracy", "mean"),
        params=("params", "mean"), n_draws=("draw", "nunique"), removed=("removed", "first"),
        heal_steps=("heal_steps", "first")).reset_index()
    agg.loc[agg["n_draws"] > 1, "removed"] = ""  # several sets: see raw.csv
    return agg


def stability_pairs(rankings: pd.DataFrame) -> pd.DataFrame:
    """Kendall tau and mean top-k overlap (k = 1..K) of every compared pair of rankings.

    seeds: every pair of runs of one model (final rankings); calibration: every pair of
    calibration subsets of one run; checkpoints: each earlier checkpoint of a run vs its final
    ranking. Random compares draw ``d`` with draw ``d`` (different seeds), then averages draws.
    """
    rows = []
    final = rankings[rankings["context"] == "final"]
    for (model, method), d in final.groupby(["model", "method"], sort=False):
        runs = d.groupby("draw")
        for draw, dd in runs:
            dd = dd.sort_values("seed")
            for (_, a), (_, b) in itertools.combinations(dd.iterrows(), 2):
                rows.append(_pair(a, b, "seeds", f"seed {a.seed} vs {b.seed}", method, draw))
    calib = pd.concat([final, rankings[rankings["context"] == "calibration"]])
    for (run_id, method, draw), d in calib.groupby(["run_id", "method", "draw"], sort=False):
        d = d.sort_values("subset")
        for (_, a), (_, b) in itertools.combinations(d.iterrows(), 2):
            rows.append(_pair(a, b, "calibration", f"{run_id}: subset {a.subset} vs {b.subset}", method, draw))
    ckpt = rankings[rankings["context"] == "checkpoint"]
    ref = final.set_index(["run_id", "method", "draw"])
    for _, a in ckpt.iterrows():
        b = ref.loc[(a.run_id, a.method, a.draw)]
        rows.append(_pair(a, b, "checkpoints", f"{a.run_id}: step {a.step} vs final", a.method, a.draw))
    cols = ["model", "family", "depth_B", "method", "context", "pair", "draw", "tau", "overlap", "by_construction"]
    if not rows:
        return pd.DataFrame(columns=cols)
    per_draw = pd.DataFrame(rows)
    keys = ["model", "family", "depth_B", "method", "context", "pair"]
    out = per_draw.groupby(keys, sort=False).agg(tau=("tau", "mean"), overlap=("overlap", "mean"),
                                                 n_draws=("draw", "nunique"),
                                                 by_construction=("by_construction", "first")).reset_index()
    return out


def _pair(a: pd.Series, b: pd.Series, context: str, pair: str, method: str, draw: int) -> dict:
    oa, ob = a["order"].split(";"), b["order"].split(";")
    return {"model": a["model"], "family": a["family"], "depth_B": int(a["depth_B"]), "method": method,
            "context": context, "pair": pair, "draw": int(draw), "tau": kendall_tau(oa, ob),
            "overlap": mean_overlap(oa, ob, int(a["K"])),
            # identical by construction: a fixed order, or no calibration data when only that varies
            "by_construction": method == "last" or (context == "calibration" and method in CALIBRATION_FREE)}


def stability_summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and max of tau and overlap per model, method and comparison."""
    if pairs.empty:
        return pd.DataFrame(columns=["model", "method", "context", "tau_mean", "tau_min", "tau_max",
                                     "overlap_mean", "n_pairs", "by_construction"])
    g = pairs.groupby(["model", "family", "depth_B", "method", "context"], sort=False)
    return g.agg(tau_mean=("tau", "mean"), tau_min=("tau", "min"), tau_max=("tau", "max"),
                 overlap_mean=("overlap", "mean"), n_pairs=("pair", "nunique"),
                 by_construction=("by_construction", "first")).reset_index()


COMPARISON_COLUMNS = ["test", "model", "family", "depth_B", "quantity", "stage", "context", "k", "method",
                      "estimate", "se", "df", "ci_low", "ci_high", "p", "n", "by_construction"]


def _pruning_comparisons(results: pd.DataFrame) -> list[dict]:
    """Loss and accuracy rows of :func:`comparisons` (pruned models, paired by seed)."""
    rows = []
    pruned = results[results["k"] > 0]
    for model, d in pruned.groupby("model", sort=False):
        fam, B = d["family"].iloc[0], int(d["depth_B"].iloc[0])
        info = {"model": model, "family": fam, "depth_B": B}
        for stage in STAGES:
            ds = d[d["stage"] == stage]
            per_seed = ds.groupby(["method", "seed"])["loss"].mean().unstack("seed")
            cf = per_seed.loc[CASCADEFLOW]
            for m in METHODS:
                if m == CASCADEFLOW or m not in per_seed.index:
                    continue
                seeds = cf.index[cf.notna() & per_seed.loc[m].notna()]
                rows.append(paired_row(f"{model} {stage}: mean loss over k, cascadeflow - {m}",
                                       cf[seeds], per_seed.loc[m, seeds], **info, quantity="loss", stage=stage,
                                       context="", k=np.nan, method=m, by_construction=False))
            for k, dk in ds.groupby("k"):
                rows += _accuracy_rows(dk, info, stage, int(k))
    return rows


def _accuracy_rows(dk: pd.DataFrame, info: dict, stage: str, k: int) -> list[dict]:
    """Accuracy rows at one ``k`` and stage: next-token / top-1 ``accuracy`` and, for Transformers,
    the multiple-choice ``choice_accuracy``; CascadeFlow minus every method and minus the heuristic
    with the highest mean there (``<quantity>_vs_best``)."""
    rows = []
    for q in ("accuracy", "choice_accuracy"):
        if q not in dk or not np.isfinite(dk[q].to_numpy(float)).any():
            continue
        acc = dk.pivot_table(index="method", columns="seed", values=q)
        cfa = acc.loc[CASCADEFLOW]
        for m in METHODS:
            if m == CASCADEFLOW or m not in acc.index:
                continue
            rows.append(paired_row(f"{info['model']} {stage} k={k}: {q}, cascadeflow - {m}", cfa, acc.loc[m],
                                   **info, quantity=q, stage=stage, context="", k=k, method=m,
                                   by_construction=False))
        best = acc.loc[[h for h in HEURISTICS if h in acc.index]].mean(axis=1).idxmax()
        rows.append(paired_row(f"{info['model']} {stage} k={k}: {q}, cascadeflow - best heuristic ({best})",
                               cfa, acc.loc[best], **info, quantity=f"{q}_vs_best", stage=stage, context="", k=k,
                               method=best, by_construction=False))
    return rows


def _stability_comparisons(pairs: pd.DataFrame) -> list[dict]:
    """Kendall tau and overlap rows of :func:`comparisons` (paired by compared pair)."""
    rows = []
    for (model, context), d in pairs.groupby(["model", "context"], sort=False):
        fam, B = d["family"].iloc[0], int(d["depth_B"].iloc[0])
        for q in ("tau", "overlap"):
            wide = d.pivot_table(index="pair", columns="method", values=q)
            flags = d.groupby("method")["by_construction"].first()
            if CASCADEFLOW not in wide:
                continue
            for m in METHODS:
                if m == CASCADEFLOW or m not in wide:
                    continue
                ok = wide[[CASCADEFLOW, m]].dropna()
                rows.append(paired_row(f"{model} {context}: {q}, cascadeflow - {m}", ok[CASCADEFLOW], ok[m],
                                       model=model, family=fam, depth_B=B, quantity=q, stage="", context=context,
                                       k=np.nan, method=m, by_construction=bool(flags[CASCADEFLOW] or flags[m])))
    return rows


def comparisons(results: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """CascadeFlow (``A``) minus every other method, with paired t-intervals (stats rows).

    * ``loss``: per seed, the mean held-out loss (log-perplexity) over ``k = 1..K``, per stage;
      negative = CascadeFlow prunes better.
    * ``accuracy``: at each ``k`` and stage, per seed; and a ``best heuristic`` row per ``k``:
      CascadeFlow minus the heuristic with the highest mean accuracy there.
    * ``tau`` / ``overlap``: per compared pair, per comparison (seeds, calibration, checkpoints);
      positive = CascadeFlow more stable. ``by_construction`` marks rows where either side is
      identical by construction.
    """
    rows = _pruning_comparisons(results) + _stability_comparisons(pairs)
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def cost_table(cost: pd.DataFrame) -> pd.DataFrame:
    """Scoring cost per model and method: extra passes over calibration batches and seconds
    (mean over runs and random draws)."""
    g = cost.groupby(["model", "family", "depth_B", "method"], sort=False)
    out = g.agg(forward_passes=("forward_passes", "mean"), backward_passes=("backward_passes", "mean"),
                calib_batches=("calib_batches", "first"), seconds=("seconds", "mean"),
                seconds_max=("seconds", "max")).reset_index()
    free = "training gradients (already recorded)"
    needs = {"cascadeflow": free, "cascadeflow_rms": free, "magnitude": "weights", "random": "nothing",
             "last": "nothing"}
    out["needs"] = [needs.get(m, "calibration batches") for m in out["method"]]
    return out


def summarize(results: pd.DataFrame, stab: pd.DataFrame, cost: pd.DataFrame) -> pd.DataFrame:
    """One row per model and method: means over k = 1..K and seeds (Transformer: perplexity;
    ResNet: loss), accuracy, rank stability (mean tau) and scoring cost."""
    pruned = results[results["k"] > 0]
    rows = []
    for (model, method), d in pruned.groupby(["model", "method"], sort=False):
        text = d["family"].iloc[0] == "transformer"
        metric = "perplexity" if text else "loss"
        row = {"model": model, "method": method, "metric": metric}
        for stage in STAGES:
            ds = d[d["stage"] == stage]
            row[stage] = ds[metric].mean()  # the metric's mean over k and seeds
            row[f"{stage}_acc"] = ds["accuracy"].mean()
        for context in CONTEXTS:
            hit = stab[(stab["model"] == model) & (stab["method"] == method) & (stab["context"] == context)]
            row[f"tau_{context}"] = float(hit["tau_mean"].iloc[0]) if len(hit) else float("nan")
        c = cost[(cost["model"] == model) & (cost["method"] == method)]
        row.update(fwd=float(c["forward_passes"].iloc[0]), bwd=float(c["backward_passes"].iloc[0]),
                   seconds=float(c["seconds"].iloc[0]))
        rows.append(row)
    return pd.DataFrame(rows)


# ---- CascadeFlow vs depth order ------------------------------------------------------------------

def removed_sets_differ(a: str, b: str) -> bool:
    """Whether two removal sets (``;``-joined block names, any order) name different blocks."""
    return set(filter(None, str(a).split(";"))) != set(filter(None, str(b).split(";")))


def depth_order_cases(results: pd.DataFrame, rankings: pd.DataFrame) -> pd.DataFrame:
    """One row per run, ``k`` and stage: Kendall tau between CascadeFlow's final ranking and depth
    order (``last``: last block first) of that run, whether the two remove different blocks at this
    ``k``, and the held-out loss of each and their difference (CascadeFlow minus last-k; zero by
    construction where the sets agree: the same pruned model)."""
    final = rankings[(rankings["context"] == "final") & (rankings["draw"] == 0)]
    orders = final.set_index(["run_id", "method"])["order"]
    pruned = results[(results["k"] > 0) & results["method"].isin([CASCADEFLOW, DEPTH_ORDER])]
    rows = []
    for (run_id, k, stage), d in pruned.groupby(["run_id", "k", "stage"], sort=False):
        by = d.set_index("method")
        if not {CASCADEFLOW, DEPTH_ORDER} <= set(by.index):
            continue
        cf, last = by.loc[CASCADEFLOW], by.loc[DEPTH_ORDER]
        tau = kendall_tau(orders[(run_id, CASCADEFLOW)].split(";"), orders[(run_id, DEPTH_ORDER)].split(";"))
        rows.append({**{c: cf[c] for c in RUN_KEYS if c != "run_id"}, "run_id": run_id, "k": int(k),
                     "stage": stage, "tau": tau, "differs": removed_sets_differ(cf["removed"], last["removed"]),
                     "removed_cascadeflow": cf["removed"], "removed_last": last["removed"],
                     "loss_cascadeflow": float(cf["loss"]), "loss_last": float(last["loss"]),
                     "loss_diff": float(cf["loss"]) - float(last["loss"])})
    cols = [*RUN_KEYS, "k", "stage", "tau", "differs", "removed_cascadeflow", "removed_last", "loss_cascadeflow",
            "loss_last", "loss_diff"]
    return pd.DataFrame(rows, columns=cols)


DEPTH_ORDER_COLUMNS = ["model", "family", "depth_B", "stage", "k", "n_runs", "n_differ", "tau_mean", "tau_min",
                       "tau_max", "estimate", "se", "df", "ci_low", "ci_high", "p", "n"]


def depth_order_table(cases: pd.DataFrame) -> pd.DataFrame:
    """Per model, stage and ``k``: in how many runs CascadeFlow removes other blocks than last-k
    (``n_differ`` of ``n_runs``), the per-run Kendall tau of its ranking with depth order (mean,
    min, max over runs: one number per run, the same at every ``k``), and the held-out loss
    difference CascadeFlow minus last-k on exactly the differing runs: mean with a paired t-interval
    over those ``G`` runs (G - 1 df) and its two-sided p; NaN bounds for one differing run (no
    spread), NaN estimate for none (nothing to compare: the two methods pruned the same model)."""
    rows = []
    for (model, stage, k), d in cases.groupby(["model", "stage", "k"], sort=False):
        diff = d[d["differs"].astype(bool)]
        tau = d["tau"].to_numpy(float)
        row = {"model": model, "family": d["family"].iloc[0], "depth_B": int(d["depth_B"].iloc[0]), "stage": stage,
               "k": int(k), "n_runs": int(d["run_id"].nunique()), "n_differ": len(diff),
               "tau_mean": float(np.mean(tau)), "tau_min": float(np.min(tau)), "tau_max": float(np.max(tau))}
        if len(diff):
            r = paired_row("", diff["loss_cascadeflow"], diff["loss_last"])
            row.update(estimate=r["estimate"], se=r["se"], df=r["df"], ci_low=r["ci_low"], ci_high=r["ci_high"],
                       p=r["p"], n=r["n"])
        else:
            row.update(estimate=np.nan, se=np.nan, df=np.nan, ci_low=np.nan, ci_high=np.nan, p=np.nan, n=0)
        rows.append(row)
    return pd.DataFrame(rows, columns=DEPTH_ORDER_COLUMNS)


def run(profile: str = "default", ctx: Context | None = None) -> pd.DataFrame:
    """Read back study 1's runs, prune every one with every method in the pool, tabulate, write."""
    ctx, started, p, runs, results_runs = start(NAME, configs, profile, ctx)
    parts = analyze_all(runs, results_runs, ctx)
    raw, rankings = parts["raw"], parts["rankings"]
    results = aggregate_draws(raw)
    pairs = stability_pairs(rankings)
    stab = stability_summary(pairs)
    cost = cost_table(parts["cost"])
    comp = comparisons(results, pairs)
    summary = summarize(results, stab, cost)
    cases = depth_order_cases(results, rankings)
    meta = {**p.prune.meta(), "calib_seed": CALIB_SEED, "heal_seed": HEAL_SEED,
            "checkpoint_steps": sorted({int(x) for x in rankings.loc[rankings.context == "checkpoint", "step"]})}
    return finish(ctx, NAME, results, summary, results_runs, started, main_table="results", meta=meta, raw=raw,
                  rankings=rankings, stability=pairs, stability_summary=stab, cost=cost, comparisons=comp,
                  depth_order_cases=cases, depth_order=depth_order_table(cases))
