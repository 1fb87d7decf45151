"""Beyond the paper — what sets the gradient profile: path counts, path gains, or stream growth?

**Hypothesis.** Fan-in counts the gradient paths of order <= 1. The gradient reaching branch
``i`` is ``prod_{j > i}(I + J_j)^T g``, so what arrives also depends on the gains of the branch
Jacobians ``J_j`` and on how their contributions align. In a Pre-LN stack ``J_j`` scales like
``1 / RMS(x_j)``: a stream that grows with depth shrinks late branches' gains, a rival account of
the same falling profile.

**Prediction.** If counts are what matters, ``F`` predicts the profile of ``A`` as well as any
gain-weighted account and about equally well under every norm placement. If gains matter, the
gain-weighted accounts (aligned sum, orthogonal root-sum-of-squares, full product of
:mod:`gfa_theory.theory.gains`, fed with measured gains) predict better, most visibly where the
placement changes the gains (Post-LN, Peri-LN, LayerNorm Scaling, residual scaling, a larger
embedding scale) but not the wiring.

**Method (first version).** Train the norm-placement arms of :data:`ARMS` (each a
``GPTConfig.norm``; Pre-LN at every depth of the plan, the others at the middle depth) and the
two ResNet variants, then on each trained model measure per branch, on fixed held-out batches,
the stream and branch RMS, the probe Jacobian gain ``g_i`` and the alignment of each branch's
contribution with the identity path (:mod:`gfa_theory.instrument.gains`). Predict each run's
branch profile of ``A`` with no fitting on that run: (a) counts ``F(i)``, (b) the aligned limit
``sum_m (1 + sum g_j)``, (c) the orthogonal limit ``sqrt(sum_m (1 + sum g_j^2))``, (d) the full
product ``sum_m prod (1 + g_j)``. Score: RMS over branches of ``log(pred / mean pred) -
log(A / mean A)`` (a scale-free profile error; 0 = the right shape).

**Limits of this version.** Gains are measured on the final model, not sampled during training
(the training loop has no gain hook yet), and skip gains are taken as 1, which Post-LN and
``alpha != 1`` violate; the comparison has no confidence intervals yet (one row per arm and
account with the mean, min and max over seeds).

**Reading the result.** ``summary``: per (arm, account) the mean profile error over seeds; the
account with the smallest error for an arm is the better description of its profile.
``units``: per branch of every run, ``A``, ``F``, the measured gain quantities and each account's
normalized prediction (what figures F9-F11 are meant to draw).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from gfa_theory.instrument.gains import measure_gains
from gfa_theory.theory import gains as theory
from gfa_theory.theory.symbolic import branch_fan_in

from .plans import gpt_run, plan, resnet_run
from .runner import Context, start
from .study_io import finish
from .units import heldout_batches, unit_table

NAME = "mechanism"
ACCOUNTS = ("counts", "aligned", "orthogonal", "product")
GAIN_BATCHES = 2  # held-out batches per run for the gain measurements
GAIN_PROBES = 4

# arm -> GPTConfig.norm (None: today's Pre-LN). DeepNorm's alpha is set from the depth.
ARMS: dict[str, dict | None] = {
    "pre": None,
    "post": {"placement": "post"},
    "peri": {"placement": "peri"},
    "ln_scaling": {"depth_scaling": True},
    "mix": {"placement": "mix", "mix_post_fraction": 0.25},
    "deepnorm": {"placement": "post", "alpha": None},
    "embed_x8": {"embedding_scale": 8.0},
}


def _norm(arm: str, n_blocks: int) -> dict | None:
    norm = ARMS[arm]
    if norm is not None and norm.get("alpha", 1.0) is None:  # DeepNorm: alpha = (2N)^(1/4)
        norm = {**norm, "alpha": float((2 * 2 * n_blocks) ** 0.25)}
    return norm


def configs(profile: str) -> list[tuple[dict, object]]:
    """(descriptors, RunConfig): Pre-LN at every depth, the other arms at the middle depth, and
    the pre-activation and post-activation ResNets at the middle ResNet depth."""
    p = plan(profile)
    mid = p.depths[len(p.depths) // 2]
    out = []
    for arm in ARMS:
        for B in (p.depths if arm == "pre" else (mid,)):
            norm = _norm(arm, B)
            kw = {} if norm is None else {"norm": norm}
            for seed in p.seeds:
                out.append(({"family": "transformer", "arm": arm, "depth_B": B},
                            gpt_run(p, n_blocks=B, seed=seed, **kw)))
    bps = p.resnet_depths[len(p.resnet_depths) // 2]
    for variant in ("preact", "post"):
        for seed in p.seeds:
            out.append(({"family": "resnet", "arm": f"resnet_{variant}", "depth_B": sum(bps)},
                        resnet_run(p, blocks_per_stage=list(bps), seed=seed, variant=variant)))
    return out


def _gain_table(run, n_batches: int = GAIN_BATCHES) -> pd.DataFrame:
    """Per branch: the gain quantities, averaged over held-out batches."""
    frames = [measure_gains(run.model, x, y, probes=GAIN_PROBES, seed=k)
              for k, (x, y) in enumerate(heldout_batches(run, n_batches, 16))]
    df = pd.concat(frames, ignore_index=True)
    return df.pivot_table(index="index", columns="quantity", values="value", aggfunc="mean")


def predictions(layout, gains: np.ndarray) -> dict[str, np.ndarray]:
    """Each account's branch profile from the layout and measured branch gains."""
    F = branch_fan_in(layout)
    return {"counts": np.array([F[i] for i in range(1, layout.N + 1)], dtype=float),
            "aligned": theory.aligned_limit(layout, gains),
            "orthogonal": theory.orthogonal_limit(layout, gains),
            "product": theory.full_product(layout, gains)}


def run_units(run, **descriptors) -> pd.DataFrame:
    """Branch table of one run: A, F, measured gains and every account's normalized profile."""
    units = unit_table(run, "branch", **descriptors)
    layout = run.model.layout()
    g = _gain_table(run)
    by_branch = g.reindex(range(1, layout.N + 1))
    preds = predictions(layout, by_branch["jacobian_gain"].to_numpy())
    for q in g.columns:  # a shared unit: the mean over its applications
        units[q] = [float(by_branch.loc[list(u.applications), q].mean()) for u in run.model.units("branch")]
    for name, values in preds.items():
        per_unit = [float(values[[a - 1 for a in u.applications]].sum()) for u in run.model.units("branch")]
        units[f"pred_{name}"] = np.array(per_unit) / np.mean(per_unit)
    return units


def profile_errors(units: pd.DataFrame) -> pd.DataFrame:
    """Per run and account: RMS of the log-profile error against ``A`` (both mean-normalized)."""
    rows = []
    for run_id, d in units.groupby("run_id", sort=False):
        logA = np.log(d["A"] / d["A"].mean())
        for acc in ACCOUNTS:
            pred = d[f"pred_{acc}"]
            err = np.sqrt(np.mean((np.log(pred / pred.mean()) - logA) ** 2))
            rows.append({"run_id": run_id, "arm": d["arm"].iat[0], "depth_B": d["depth_B"].iat[0],
                         "account": acc, "log_error": float(err)})
    return pd.DataFrame(rows)


def summarize(errors: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, depth, account): mean, min and max profile error over seeds, and the best account."""
    s = (errors.groupby(["arm", "depth_B", "account"], sort=False)["log_error"]
         .agg(["mean", "min", "max", "count"]).reset_index())
    best = s.loc[s.groupby(["arm", "depth_B"], sort=False)["mean"].idxmin(), ["arm", "depth_B", "account"]]
    s["best"] = s.set_index(["arm", "depth_B", "account"]).index.isin(
        best.set_index(["arm", "depth_B", "account"]).index)
    return s


def run(profile: str = "default", ctx: Context | None = None) -> pd.DataFrame:
    """Train (or read back) the arms, measure gains, predict and score every account, write."""
    ctx, started, _, runs, results = start(NAME, configs, profile, ctx)
    units = pd.concat([run_units(res, **desc) for (desc, _), res in zip(runs, results)], ignore_index=True)
    errors = profile_errors(units)
    return finish(ctx, NAME, units, summarize(errors), results, started, errors=errors,
                  meta={"accounts": list(ACCOUNTS), "gain_batches": GAIN_BATCHES, "gain_probes": GAIN_PROBES})
