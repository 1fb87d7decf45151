"""Beyond the paper — what sets the gradient profile: path counts, path gains, or stream growth?

**Hypothesis.** Fan-in counts the gradient paths of order <= 1. The gradient reaching branch
``i`` is ``prod_{j > i}(I + J_j)^T g``, so what arrives also depends on the gains of the branch
Jacobians ``J_j`` and on how their contributions align. In a Pre-LN stack ``J_j`` scales like
``1 / RMS(x_j)``: a stream that grows with depth shrinks late branches' gains, a rival account of
the same falling profile. Whether the contributions add like vectors pointing one way (the
aligned limit, ``A ~ F``) or like orthogonal ones (``A ~ sqrt(F)``) should depend on how many
directions the gradients spread over: their rank.

**Prediction.** If counts are what matters, ``F`` predicts the profile of ``A`` as well as any
gain-weighted account (H1) and about equally well under every norm placement. If gains matter,
the gain-weighted accounts (aligned sum, orthogonal root-sum-of-squares, full product of
:mod:`gfa_theory.theory.gains`, fed with measured gains) predict better where the placement
changes the gains but not the wiring: Post-LN, Peri-LN, LayerNorm Scaling, a larger embedding
scale (H2). If stream growth is the mechanism, runs whose stream grows faster have a
flatter ``A`` profile than counts say (late gains shrink, so early branches collect less: H3).
If alignment is the mechanism, the exponent of ``A`` on ``F`` falls as the gradient rank rises
(H4). The rules, margins and verdicts are declared in :mod:`experiments.verdicts.mechanism`.

**Method.** Train the norm-placement arms of :data:`ARMS` (each a ``GPTConfig.norm``; Pre-LN at
every depth of the plan, the others at the middle depth), two Pre-LN settings that move the
gradient rank (:data:`SETTINGS`: a 4x smaller batch; a 3x larger learning rate where the plan has
one: ``smoke`` and ``full``, cut from ``default`` for its 30-minute budget), every run with
``accumulate``, ``track_updates`` and ``gain_every`` on, as every study Transformer is
(:func:`experiments.plans.gpt_run`; the Pre-LN runs are the fan-in study's own): the training loop samples, per branch, the stream RMS at its input,
the branch output RMS, the probe Jacobian gain ``g_i`` and the alignment of its contribution with
the identity path (:mod:`gfa_theory.instrument.gains`) every ``gain_every`` steps into the run's
``gains.csv``. Predict each run's branch profile of ``A`` with no fitting on that run: (a)
counts ``F(i)``, (b) the aligned limit ``sum_m (1 + sum g_j)``, (c) the orthogonal limit
``sqrt(sum_m (1 + sum g_j^2))``, (d) the full product ``sum_m prod (a + g_j)``, where ``g_j`` is
the gain **averaged over the training samples** (steps 0, ``gain_every``, ...; the gradient
``A`` sums over all of training, so its account uses the gains training saw) and ``a`` the skip
gain ``alpha`` of the config (1 in every arm trained here; DeepNorm-style ``alpha`` enters it). Gains measured on the final model on
held-out batches give the same accounts as a secondary (``gains == "final"``). Score: RMS over
branches of ``log(pred / mean pred) - log(A / mean A)`` (a scale-free profile error; 0 = the
right shape), per run, then per arm and account the mean with a t-interval over seeds.

Per block, on the final model: the effective rank (entropy of singular values) and stable rank
of the accumulated gradient matrix ``sum_t g_t`` (the tracker's sums from the checkpoint) and of
a window of ``rank_window`` held-out minibatch gradients at the run's batch size (its
uncentred covariance; :class:`~gfa_theory.instrument.rank.RankMonitor`). Per run: the
within-run exponent of ``A`` on ``F`` (log-log slope) and Spearman ``rho(A, F)``, the log-slope
of ``A / F`` and of the stream RMS over relative depth, and the mean relative window rank.

Accumulation proxies: on the Pre-LN runs (every depth, as claim C5), each of ``A``, ``G_norm``
(net gradient), ``A - noise_floor`` (``A`` beyond what minibatch noise alone would give), ``U``
(summed update norms) and ``displacement`` is put through the regression of study 2
(:func:`experiments.gradients_vs_importance.summarize`: OLS of normalized ablation importance on
the normalized proxy with a depth control, per-run Spearman without the first block) against
held-out ablation importance (:func:`experiments.units.ablation_units`).

**Controls.** Pre-LN at three depths is the reference the paper's theory describes; the accounts
are chosen on it and compared on the other arms (held-out runs: the gain-weighted account H2
tests is the one best on Pre-LN). Measuring gains runs in eval mode on the step's batch and
leaves training bit-identical (``tests/test_gains.py``). Absolute numbers (validation loss,
stream RMS, gains) are in the tables beside the shapes.

**Limits.** Skip gains are ``alpha`` and the norms' own Jacobians are not measured: under
Post-LN every path through position ``p`` also passes the norm there, a factor the accounts
leave out. The first version's DeepNorm, mixed-placement and ResNet arms are cut to fit the
default profile's budget (the code takes them back as entries of :data:`ARMS`); the prediction study
(:mod:`experiments.prediction`, scale profile) trains them, with the norms' own gains in the accounts. The window ranks are of held-out gradients at the final weights, not of
a window during training. Arms differ in more than their gains (the embedding scale changes the
loss too), so H3 and H4 are associations across runs, not interventions.

**What the default profile shows** (27 runs, 3 seeds; errors are mean [95 % t-interval] over
seeds; :mod:`experiments.verdicts.mechanism` has the verdicts). The full product of measured gains is the best
account in every Pre-LN-wired arm: on Pre-LN its profile error is 0.26-0.29 against 0.55-0.72 for
counts (B = 4, 8, 12), and counts lose by 0.38 [0.31, 0.45] pooled, far beyond the 0.05 margin
(H1 does not hold). What counts miss is the first branches: ``A`` drops steeply over the first
block and is nearly flat after it, while ``F`` falls linearly to the end (F9). Carried unchanged
to the held-out arms, the product beats counts on every one (by 0.15-0.30), significantly after
Holm on LayerNorm Scaling and the embedding scale, not quite on Post-LN and Peri-LN (Holm p =
0.057 each; H2 mixed). Post-LN defeats every account (errors 1.4-1.8): its ``A`` rises again over
the last blocks, which no path sum of forward gains describes (the norms' Jacobians are missing).
Stream growth goes against the predicted sign (H3 does not hold: faster growth, less flattening
beyond counts; Spearman -0.65, still -0.51 without Post-LN), and the exponent of ``A`` on ``F``
rises with the gradients' window rank (H4 does not hold: Spearman 0.47), an association carried
by the Post-LN runs (low rank, negative exponent; 0.24, p = 0.25 without them). As importance
proxies, ``A``, ``U`` and displacement meet claim C5's rule, ``G_norm`` partly, ``A - noise_floor``
not (H5 inconclusive).

**Reading the result.** ``summary``: per (arm, depth, account, gains) the mean profile error with
its 95 % t-interval over seeds, and the best account per arm; ``errors``: one row per run and
account; ``units``: per branch of every run, ``A``, ``F``, the training-mean and final gain
quantities and each account's normalized prediction (F9 draws them); ``runs``: per run, the
stream growth, exponent, rho and ranks (F11); ``blocks``: per block, ranks and (Pre-LN) ablation
importance; ``proxies``: the study-2 regression rows per proxy. :mod:`experiments.verdicts.mechanism` turns them
into the verdicts of H1-H5; F10 draws the profile errors with their intervals.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gfa_theory.instrument import stats
from gfa_theory.instrument.gains import measure_gains
from gfa_theory.instrument.rank import UNIT as RANK_UNIT
from gfa_theory.instrument.rank import RankMonitor
from gfa_theory.instrument.tracking import GradientTracker
from gfa_theory.models.base import logits_and_loss
from gfa_theory.theory import gains as theory
from gfa_theory.train.loop import GAINS_FILE
from gfa_theory.train.lifecycle import RunResult
from gfa_theory.train.store import CHECKPOINT_FILE, load_run, read_checkpoint

from . import gradients_vs_importance
from .plans import gpt_run, plan
from .runner import Context, map_in_workers, start
from .study_io import finish
from .units import ablation_units, heldout_batches, unit_table

NAME = "mechanism"
ACCOUNTS = ("counts", "aligned", "orthogonal", "product")
GAIN_ACCOUNTS = ACCOUNTS[1:]
GAIN_SOURCES = ("training", "final")  # gains averaged over training samples (primary) / of the final model
GAIN_QUANTITIES = ("stream_rms", "branch_rms", "jacobian_gain", "alignment")
PROXIES = ("A", "G_norm", "A_signal", "U", "displacement")  # A_signal = A - noise_floor


@dataclass(frozen=True)
class MechanismPlan:
    """The study's own sizes: final-model gain batches and probes, the rank window (held-out
    minibatch gradients at the final weights), and the rank-moving settings. The gain sampling
    interval during training is the plan's ``train.gain_every`` (every study Transformer samples)."""

    gain_batches: int
    gain_probes: int
    rank_window: int
    small_batch: int
    high_lr: float | None  # None: no larger-learning-rate setting (the default profile's budget)


PLANS = {"smoke": MechanismPlan(gain_batches=1, gain_probes=2, rank_window=3, small_batch=2,
                                high_lr=1e-2),
         "lesson": MechanismPlan(gain_batches=1, gain_probes=2, rank_window=8, small_batch=4,
                                 high_lr=None),
         "default": MechanismPlan(gain_batches=2, gain_probes=2, rank_window=16, small_batch=4,
                                  high_lr=None),
         "full": MechanismPlan(gain_batches=4, gain_probes=2, rank_window=32, small_batch=16,
                               high_lr=3e-3)}

# arm -> GPTConfig.norm (None: today's Pre-LN). DeepNorm's alpha is set from the depth.
ARMS: dict[str, dict | None] = {
    "pre": None,
    "post": {"placement": "post"},
    "peri": {"placement": "peri"},
    "ln_scaling": {"depth_scaling": True},
    "embed_x8": {"embedding_scale": 8.0},
}
# Pre-LN at the middle depth with a training setting changed: they move the gradient rank (H4)
SETTINGS = ("pre_small_batch", "pre_high_lr")
GAIN_ARMS = ("post", "peri", "ln_scaling", "embed_x8")  # H2: the placement changes the gains


def deepnorm_alpha(n_blocks: int) -> float:
    """DeepNorm's skip gain ``alpha = (2N)^(1/4)`` for ``N = 2 n_blocks`` branches."""
    return float((2 * 2 * n_blocks) ** 0.25)


def _norm(arm: str, n_blocks: int) -> dict | None:
    norm = ARMS[arm]
    if norm is not None and norm.get("alpha", 1.0) is None:  # DeepNorm
        norm = {**norm, "alpha": deepnorm_alpha(n_blocks)}
    return norm


def _instrumented(cfg, mp: MechanismPlan, **train_kw):
    """The run with any training change in ``train_kw`` (the recordings the study reads, opt-in
    totals and sampled gains, are on in every study Transformer: :func:`experiments.plans.gpt_run`)."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train_kw)) if train_kw else cfg


def configs(profile: str) -> list[tuple[dict, object]]:
    """(descriptors, RunConfig): Pre-LN at every depth, the other arms and the rank settings at the
    middle depth (the first version's DeepNorm, mixed-placement and ResNet arms are cut: the
    default profile's budget)."""
    p, mp = plan(profile), PLANS[profile]
    mid = p.depths[len(p.depths) // 2]
    out = []
    for arm in ARMS:
        for B in (p.depths if arm == "pre" else (mid,)):
            norm = _norm(arm, B)
            kw = {} if norm is None else {"norm": norm}
            for seed in p.seeds:
                out.append(({"family": "transformer", "arm": arm, "depth_B": B},
                            _instrumented(gpt_run(p, n_blocks=B, seed=seed, **kw), mp)))
    for arm, kw in zip(SETTINGS, ({"batch_size": mp.small_batch}, {"lr": mp.high_lr})):
        if None in kw.values():
            continue
        for seed in p.seeds:
            out.append(({"family": "transformer", "arm": arm, "depth_B": mid},
                        _instrumented(gpt_run(p, n_blocks=mid, seed=seed), mp, **kw)))
    return out


# ---- accounts -----------------------------------------------------------------------------------

def _skip_gains(model, layout) -> list[float] | None:
    """The skip gain ``alpha`` at every stream position (None: identity skips)."""
    norms = getattr(getattr(model, "config", None), "norms", None)
    alpha = float(norms().alpha) if callable(norms) else 1.0
    return None if alpha == 1.0 else [alpha] * layout.n_positions


def predictions(layout, gains: np.ndarray, identity: list[float] | None = None) -> dict[str, np.ndarray]:
    """Each account's branch profile from the layout, measured branch gains and skip gains
    (:func:`gfa_theory.theory.gains.accounts`, without norm gains: this study's accounts)."""
    return theory.accounts(layout, gains, identity=identity)


def training_gains(run_dir) -> pd.DataFrame:
    """Per branch (index) and quantity: the mean over the gains sampled during training."""
    g = pd.read_csv(run_dir / GAINS_FILE)
    return g.pivot_table(index="index", columns="quantity", values="value", aggfunc="mean")


def final_gains(run: RunResult, mp: MechanismPlan) -> pd.DataFrame:
    """Per branch: the gain quantities of the final model, averaged over held-out batches."""
    run.model.eval()
    frames = [measure_gains(run.model, x, y, probes=mp.gain_probes, seed=k)
              for k, (x, y) in enumerate(heldout_batches(run, mp.gain_batches, 16))]
    df = pd.concat(frames, ignore_index=True)
    return df.pivot_table(index="index", columns="quantity", values="value", aggfunc="mean")


def run_units(run: RunResult, mp: MechanismPlan, **descriptors) -> pd.DataFrame:
    """Branch table of one run: A, F, training-mean and final gains and every account's
    normalized profile (``pred_<account>`` from training gains, ``pred_final_<account>``)."""
    units = unit_table(run, "branch", **descriptors)
    layout = run.model.layout()
    skips = _skip_gains(run.model, layout)
    branch_units = run.model.units("branch")
    for source, g in (("training", training_gains(run.run_dir)), ("final", final_gains(run, mp))):
        by_branch = g.reindex(range(1, layout.N + 1))
        prefix = "" if source == "training" else "final_"
        for q in GAIN_QUANTITIES:  # a shared unit: the mean over its applications
            units[prefix + q] = [float(by_branch.loc[list(u.applications), q].mean()) for u in branch_units]
        preds = predictions(layout, by_branch["jacobian_gain"].to_numpy(), skips)
        for name, values in preds.items():
            per_unit = [float(values[[a - 1 for a in u.applications]].sum()) for u in branch_units]
            units[f"pred_{prefix}{name}"] = np.array(per_unit) / np.mean(per_unit)
    return units


def profile_errors(units: pd.DataFrame) -> pd.DataFrame:
    """Per run, account and gain source: RMS of the log-profile error against ``A`` (both
    mean-normalized: :func:`gfa_theory.theory.gains.log_profile_error`). Counts have no gains:
    their row is the same under both sources."""
    rows = []
    for run_id, d in units.groupby("run_id", sort=False):
        for source in GAIN_SOURCES:
            prefix = "" if source == "training" else "final_"
            for acc in ACCOUNTS:
                col = f"pred_{acc}" if acc == "counts" else f"pred_{prefix}{acc}"
                if col not in d:
                    continue
                err = theory.log_profile_error(d[col].to_numpy(float), d["A"].to_numpy(float))
                rows.append({"run_id": run_id, "seed": int(d["seed"].iat[0]), "family": d["family"].iat[0],
                             "arm": d["arm"].iat[0], "depth_B": int(d["depth_B"].iat[0]), "account": acc,
                             "gains": source, "log_error": float(err)})
    return pd.DataFrame(rows)


def summarize(errors: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, depth, account, gains): mean profile error with its t-interval over seeds, and
    whether the account has the smallest mean error of its arm (per gain source)."""
    rows = []
    for (arm, B, acc, src), d in errors.groupby(["arm", "depth_B", "account", "gains"], sort=False):
        m, lo, hi = stats.mean_ci(d["log_error"])
        rows.append({"family": d["family"].iat[0], "arm": arm, "depth_B": B, "account": acc, "gains": src,
                     "mean": m, "ci_low": lo, "ci_high": hi, "n": len(d)})
    s = pd.DataFrame(rows)
    best = s.groupby(["arm", "depth_B", "gains"], sort=False)["mean"].transform("min")
    s["best"] = s["mean"] == best
    return s


# ---- per run: shape, stream growth, ranks -------------------------------------------------------

def _slope(x: pd.Series, y: pd.Series) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    return float(np.polyfit(x[ok], y[ok], 1)[0]) if ok.sum() >= 2 and x[ok].nunique() > 1 else float("nan")


def run_shape(units: pd.DataFrame) -> dict:
    """Per run (branch table): exponent of A on F, Spearman rho(A, F), the log-slopes over relative
    depth of A / F and of the training-mean stream RMS, and the mean alignment."""
    logA, logF = np.log(units["A"]), np.log(units["F"])
    rho = units[["A", "F"]].corr("spearman").iloc[0, 1] if units["F"].nunique() > 1 else float("nan")
    return {"exponent": _slope(logF, logA), "rho_AF": float(rho),
            "excess_slope": _slope(units["depth"], logA - logF),
            "A_slope": _slope(units["depth"], logA),
            "stream_growth": _slope(units["depth"], np.log(units["stream_rms"])),
            "stream_rms_first": float(units["stream_rms"].iloc[0]),
            "stream_rms_last": float(units["stream_rms"].iloc[-1]),
            "mean_gain": float(units["jacobian_gain"].mean()), "mean_alignment": float(units["alignment"].mean())}


def block_ranks(run: RunResult, mp: MechanismPlan) -> pd.DataFrame:
    """Per block: ranks of the accumulated gradient matrices (the tracker's sums from training)
    and of ``rank_window`` held-out minibatch gradients at the final weights (unit means)."""
    tc = run.config.train
    model = run.model
    model.train()
    tracker = GradientTracker(model, kind=tc.track, stream=tc.track_stream, series_every=tc.series_every,
                              max_steps=tc.steps, accumulate=True, track_updates=bool(tc.track_updates))
    tracker.load_state_dict(read_checkpoint(run.run_dir / CHECKPOINT_FILE)["tracker"])
    tracker.remove_hooks()  # only its accumulated sums are read
    units = [u for u in tracker.units if u.kind == "block"]
    monitor = RankMonitor(model, window=mp.rank_window, units=units, tracker=tracker)
    for x, y in heldout_batches(run, mp.rank_window, tc.batch_size):
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            _, loss = logits_and_loss(model, x, y)
            loss.backward()
        monitor.record()
    model.zero_grad(set_to_none=True)
    df = monitor.measure()
    df = df[df["matrix"] == RANK_UNIT]
    wide = df.pivot_table(index="unit", columns="quantity", values="value", aggfunc="first")
    wide["window_relative_rank"] = wide["window_effective_rank"] / mp.rank_window
    return wide.reset_index()


def analyze_run(desc: dict, run_dir: str, profile: str) -> dict[str, pd.DataFrame]:
    """Everything measured on one finished run (a worker task): its branch table, its block
    table (ranks; ablation importance for the Pre-LN depth runs) and its one-row summary."""
    p, mp = plan(profile), PLANS[profile]
    cfg, model, metrics, gradients = load_run(Path(run_dir))
    run = RunResult(Path(run_dir), cfg, model, metrics, gradients, trained=False)
    units = run_units(run, mp, **desc)
    blocks = unit_table(run, "block", **desc)
    if desc["arm"] == "pre":
        blocks = ablation_units([(desc, cfg)], [run], p.importance)
    ranks = block_ranks(run, mp)
    blocks = blocks.merge(ranks, on="unit", how="left")
    val = metrics[metrics["split"] == "val"]
    row = {"run_id": run.run_dir.name, "seed": cfg.train.seed, **desc, **run_shape(units),
           "val_loss": float(val["loss"].iloc[-1]) if len(val) else float("nan"),
           **{f"mean_{q}": float(blocks[q].mean()) for q in ranks.columns if q != "unit"}}
    return {"units": units, "blocks": blocks, "runs": pd.DataFrame([row])}


# ---- accumulation proxies vs importance ---------------------------------------------------------

def proxy_summary(blocks: pd.DataFrame) -> pd.DataFrame:
    """Study 2's regression rows (ablation importance on the proxy) for every proxy, on the Pre-LN
    runs; each proxy's rows are labelled ``transformer[<proxy>]: ...``."""
    d = blocks[(blocks["arm"] == "pre") & blocks["imp_ablation"].notna()].copy()
    d["A_signal"] = d["A"] - d["noise_floor"]
    frames = []
    for proxy in PROXIES:
        x = d.drop(columns=[c for c in ("A_norm",) if c in d]).copy()
        x["A"] = d[proxy]
        x["A_norm"] = x["A"] / x.groupby("run_id")["A"].transform("mean")
        x["imp_ablation_norm"] = x["imp_ablation"] / x.groupby("run_id")["imp_ablation"].transform("mean")
        x["family"] = f"transformer[{proxy}]"
        frames.append(gradients_vs_importance.summarize(x).assign(proxy=proxy))
    return pd.concat(frames, ignore_index=True)


def run(profile: str = "default", ctx: Context | None = None) -> pd.DataFrame:
    """Train (or read back) the arms, measure gains, ranks and importance, score every account, write."""
    ctx, started, _, runs, results = start(NAME, configs, profile, ctx)
    parts = map_in_workers(analyze_run, [(desc, str(res.run_dir), ctx.profile)
                                         for (desc, _), res in zip(runs, results)], ctx, desc="mechanism",
                           labels=[f"analysis of run {res.run_dir}" for res in results])
    units, blocks, per_run = (pd.concat([x[k] for x in parts], ignore_index=True) for k in ("units", "blocks", "runs"))
    errors = profile_errors(units)
    mp = PLANS[ctx.profile]
    return finish(ctx, NAME, units, summarize(errors), results, started, errors=errors, runs=per_run,
                  blocks=blocks, proxies=proxy_summary(blocks),
                  meta={"accounts": list(ACCOUNTS), **dataclasses.asdict(mp),
                        "trained_here": sum(r.trained for r in results)})
