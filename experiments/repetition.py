"""Study 4 — intervention: does parameter-shared repetition restore late-layer value?

**Hypothesis (GFA: structure is the lever).** Applying the last block ``r`` times with shared
weights makes its parameter group collect gradient from ``r`` positions, so its fan-in is the sum
over its applications (:mod:`gfa_theory.theory.symbolic`). If fan-in limits what late layers
learn, the repeated group should learn more, and the model's late computation should be worth more.

**Prediction (the paper's claim).** Late-layer value is "restored" (more than in the model
without repetition) and "elevated" (more than in a model of the same compute whose extra
applications are unshared blocks).

**Method.** A Transformer of ``B`` unique blocks; the same with the last block applied
``r = 2, 3`` times (``block_schedule = [0, .., B-1, B-1, ..]``); unshared models of ``B + r - 1``
blocks. Several seeds each. After training, on fixed held-out batches, three ablations:

* *group*: every unique block removed (a shared block loses all ``r`` applications at once);
* *per application*: each position of the block order skipped alone, the group's other
  applications kept (:func:`gfa_theory.instrument.importance.application_ablation`);
* *equal applications* (the primary measure, fixed before results were read): the last ``m``
  applications of every model skipped together, ``m = 1 .. max r``
  (:func:`~gfa_theory.instrument.importance.joint_ablation`). At ``m = r`` the repeated model
  loses its whole shared group and each control loses its last ``r`` blocks: every arm loses the
  same number of applications, so the delta-loss (nats) compares like with like.

Group importance *shares* do not: a shared group's ablation removes ``r`` applications while a
control's last block is one, so its share has a different denominator. They are kept as a
secondary, reported measure. Every comparison is paired over seeds.

**Controls (and the rival each rules out).**

* *parameter-matched control* (``baseline``: the same ``B`` unique blocks, applied once): rules
  out "any model of these parameters values its late layers this much"; repetition beating it
  is "restores".
* *compute-matched control* (``control +(r-1)``: ``B + r - 1`` unshared blocks, the same
  applications per token): rules out "more depth/compute, not sharing, is what helps"; the
  per-application fan-in is the same position by position, only the parameter group's fan-in
  differs. Repetition beating it is "elevates".
* *manipulation check*: the fan-in of each parameter group, counted by autograd on the model's
  layout (:func:`gfa_theory.theory.path_counts.first_order`) beside the symbolic one (table
  ``fanin``): the repeated group's share must rise, or the study tests nothing.

**Reading the result.** ``summary`` gives per variant the last group's fan-in (autograd) and
shares, the per-application importance counted from the end, the joint delta-loss of the last m
applications and the validation loss; per r, paired differences to both controls, the primary
(``joint_delta_loss m=r``) first. Repetition restores/elevates late-layer value only if the
joint delta-loss of its last r applications exceeds the control's (the claim's rule, Holm over
the comparisons, is in ``experiments/verdicts/``). A larger group share with an equal joint
delta-loss means the share rose only because the group spans more applications. Figure F7:
per-application importance per arm (left), group fan-in shares (middle, the manipulation) and
the joint delta-loss vs m (right).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from gfa_theory.instrument import importance, stats
from gfa_theory.theory.path_counts import first_order
from gfa_theory.theory.symbolic import block_fan_in

from .plans import gpt_run, plan
from .runner import Context, start
from .study_io import finish
from .summary import keyed, mean_row, table
from .units import ablation_units, heldout_batches

NAME = "repetition"

# The claim's primary comparison, fixed before any result of this design was read: the
# equal-applications joint ablation (every arm loses its last r applications; absolute
# delta-loss in nats). Per-application importance and the group shares are secondary.
PRIMARY = "joint_delta_loss"
BASELINE = "baseline"


def repeat(r: int) -> str:
    return f"repeat r={r}"


def control(r: int) -> str:
    """The compute-matched control of repetition ``r``: ``r - 1`` extra unshared blocks."""
    return f"control +{r - 1}"


def arm(variant: str) -> str:
    """The role of a variant, as the tables name it."""
    if variant == BASELINE:
        return "parameter-matched control"
    if variant.startswith("control +"):
        return f"compute-matched control (of r={int(variant.split('+')[1]) + 1})"
    return "repetition"


def comparison(r: int, against: str, measure: str) -> str:
    """Summary test name of the paired comparison of repetition ``r`` with ``against``
    (``"baseline"``: the parameter-matched control; ``"control"``: the compute-matched one) on
    ``measure``; the measures over the last applications are taken at m = r."""
    other = f"{BASELINE} (parameter-matched)" if against == BASELINE else f"{control(r)} (compute-matched)"
    tail = f" m={r}" if measure in (PRIMARY, "late_application_importance") else ""
    return f"{repeat(r)} - {other}: {measure}{tail}"


def configs(profile: str):
    """(descriptors, RunConfig): baseline, each repetition and each control, every seed."""
    p = plan(profile)
    B = p.repetition.base
    out = []
    for seed in p.seeds:
        out.append(({"variant": BASELINE, "r": 1, "extra_blocks": 0}, gpt_run(p, n_blocks=B, seed=seed)))
        for r in p.repetition.repeats:
            sched = list(range(B)) + [B - 1] * (r - 1)
            out.append(({"variant": repeat(r), "r": r, "extra_blocks": 0},
                        gpt_run(p, n_blocks=B, seed=seed, block_schedule=sched)))
        for c in p.repetition.controls:
            out.append(({"variant": f"control +{c}", "r": 1, "extra_blocks": c},
                        gpt_run(p, n_blocks=B + c, seed=seed)))
    return out


def last_group(units: pd.DataFrame) -> pd.DataFrame:
    """Per run: the last parameter group's importance, its shares of importance, F and A."""
    rows = []
    for rid, d in units.groupby("run_id", sort=False):
        d = d.sort_values("order")
        imp = d["imp_ablation"].clip(lower=0)
        last = d.iloc[-1]
        rows.append({"run_id": rid, "seed": last["seed"], "variant": last["variant"], "arm": arm(last["variant"]),
                     "applications": last["applications"],
                     "last_importance": last["imp_ablation"],
                     "last_share": imp.iloc[-1] / imp.sum() if imp.sum() > 0 else np.nan,
                     "last_F_share": last["F"] / d["F"].sum(), "last_A_share": last["A"] / d["A"].sum(),
                     "val_loss": last["val_loss"]})
    return pd.DataFrame(rows)


def fan_in_table(runs: Sequence[tuple[dict, object]], results) -> pd.DataFrame:
    """Per variant and unique block: the group fan-in, symbolic and counted by autograd on the
    model's layout (the manipulation check: repetition must raise the last group's fan-in)."""
    rows, seen = [], set()
    for (desc, _), res in zip(runs, results):
        v = desc["variant"]
        if v in seen:
            continue
        seen.add(v)
        layout = res.model.layout()
        sym = block_fan_in(layout)
        counted = first_order(layout)
        paths = dict(zip(counted.groups, counted.group_fan_in))
        units = res.model.units("block")
        for pos, u in enumerate(units, start=1):
            group = u.applications if len(u.applications) > 1 else None
            rows.append({"variant": v, "arm": arm(v), "order": pos, "n_units": len(units), "unit": u.name,
                         "applications": len(u.applications), "F": sum(sym[a] for a in u.applications),
                         "F_paths": paths[group] if group else paths[(u.applications[0],)]})
    df = pd.DataFrame(rows)
    df["F_share"] = df["F_paths"] / df.groupby("variant")["F_paths"].transform("sum")
    return df


class _SkippedSets:
    """Delta-loss of skipping a set of a run's block applications, each set evaluated once
    (``known``: sets already measured, e.g. block ablations; held-out batches loaded on demand)."""

    def __init__(self, res, imp, base: float, known: dict[frozenset, float]) -> None:
        self.res, self.imp, self.base, self.known, self.batches = res, imp, base, known, None

    def __call__(self, positions: list[int]) -> float:
        key = frozenset(positions)
        if key not in self.known:
            self.batches = self.batches or heldout_batches(self.res, self.imp.batches, self.imp.batch_size)
            self.known[key] = importance.joint_ablation(self.res.model, self.batches, positions, self.base)
        return self.known[key]


def application_tables(runs: Sequence[tuple[dict, object]], results, imp, max_m: int,
                       units: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per run: the importance of every block application skipped alone (``applications``), and
    the delta-loss of skipping its last ``m`` applications together, m = 1..max_m (``joint``).

    Skipping a set of applications is one computation whatever it is called: skipping all of a
    block's applications is ablating the block (tested in ``tests/test_repetition.py``), so the
    block ablations of ``units`` (and its full-model loss) are reused and only new sets are
    evaluated (a repeated group's single applications, joint sets that are no one block)."""
    apps, joint = [], []
    for (desc, _), res in zip(runs, results):
        model = res.model
        mine = units[units.run_id == res.run_dir.name].set_index("unit")
        base = float(mine["val_loss"].iloc[0])
        known = {frozenset(u.applications): float(mine.loc[u.name, "imp_ablation"]) for u in model.units("block")}
        skipped = _SkippedSets(res, imp, base, known)
        owner = {a: u.name for u in model.units("block") for a in u.applications}
        n = len(owner)
        fan = block_fan_in(model.layout())
        common = {"run_id": res.run_dir.name, "seed": res.config.train.seed, "variant": desc["variant"],
                  "arm": arm(desc["variant"]), "n_applications": n}
        sizes = pd.Series(owner).value_counts()
        apps.append(pd.DataFrame([{**common, "application": a, "from_end": n - a + 1, "unit": owner[a],
                                   "group_applications": int(sizes[owner[a]]), "F_application": fan[a],
                                   "imp_application": skipped([a])} for a in sorted(owner)]))
        for m in range(1, min(max_m, n) + 1):
            removed = list(range(n - m + 1, n + 1))
            joint.append({**common, "m": m, "removed": " ".join(map(str, removed)), "delta_loss": skipped(removed)})
    return pd.concat(apps, ignore_index=True), pd.DataFrame(joint)


def late_applications(apps: pd.DataFrame, m: int) -> pd.DataFrame:
    """Per run: the mean per-application importance of its last ``m`` applications."""
    d = apps[apps["from_end"] <= m]
    return d.groupby(["run_id", "seed", "variant"], as_index=False)["imp_application"].mean()


def _per_seed(frame: pd.DataFrame, col: str) -> dict[str, pd.Series]:
    return {v: d.set_index("seed")[col] for v, d in frame.groupby("variant")}


def _paired(rows: list, a: pd.Series, b: pd.Series, test: str, **key) -> None:
    seeds = sorted(set(a.index) & set(b.index))
    rows.append(keyed(stats.paired_difference(a.loc[seeds], b.loc[seeds], test=test), **key))


def summarize(groups: pd.DataFrame, repeats: Sequence[int], apps: pd.DataFrame | None = None,
              joint: pd.DataFrame | None = None, fanin: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per variant: means over seeds (the last group's shares and absolute delta-loss, the
    per-application importance counted from the end, the equal-applications joint delta-loss, the
    last group's autograd path count); per repetition r: paired differences to the
    parameter-matched control (baseline) and to the compute-matched control (control +(r-1)),
    the primary one first: the joint delta-loss of the last m = r applications. Rows are keyed by
    ``arm`` (the variant), ``quantity``, ``m`` (applications counted from the end, where it
    applies) and, for a comparison, ``against`` (the control variant) and ``setting``
    (``parameter-matched`` or ``compute-matched``)."""
    rows = []
    by = _per_seed(groups, "last_share")
    variants = list(by)
    max_m = max(repeats)
    for v in variants:
        d = groups[groups.variant == v].set_index("seed")
        for col in ("last_share", "last_F_share", "last_A_share", "last_importance", "val_loss"):
            rows.append(mean_row(f"{v}: {col}", d[col], arm=v, quantity=col))
        if fanin is not None:
            last = fanin[(fanin.variant == v) & (fanin.order == fanin.n_units)].iloc[0]
            rows.append(mean_row(f"{v}: last_F (autograd paths)", [last["F_paths"]] * len(d),
                                 method="autograd path count on the layout (no spread: the same for every seed)",
                                 arm=v, quantity="last_F_paths"))
        if apps is not None:
            for k in range(1, max_m + 1):
                a = apps[(apps.variant == v) & (apps.from_end == k)]
                rows.append(mean_row(f"{v}: application_importance from_end={k}", a["imp_application"], arm=v,
                                     quantity="application_importance", m=k))
        if joint is not None:
            for m in range(1, max_m + 1):
                j = joint[(joint.variant == v) & (joint.m == m)]
                if len(j):
                    rows.append(mean_row(f"{v}: {PRIMARY} m={m}", j["delta_loss"], arm=v, quantity=PRIMARY, m=m))
    for r in repeats:
        against = [(BASELINE, BASELINE)] + ([("control", control(r))] if control(r) in by else [])
        matched = {BASELINE: "parameter-matched", "control": "compute-matched"}
        if joint is not None:
            js = _per_seed(joint[joint.m == r], "delta_loss")
            for key, other in against:
                _paired(rows, js[repeat(r)], js[other], comparison(r, key, PRIMARY), arm=repeat(r), against=other,
                        setting=matched[key], quantity=PRIMARY, m=r)
        if apps is not None:
            late = _per_seed(late_applications(apps, r), "imp_application")
            for key, other in against:
                _paired(rows, late[repeat(r)], late[other], comparison(r, key, "late_application_importance"),
                        arm=repeat(r), against=other, setting=matched[key], quantity="late_application_importance",
                        m=r)
        for key, other in against:
            cols = ("last_share", "last_importance") + (("val_loss",) if key == "control" else ())
            for col in cols:
                g = _per_seed(groups, col)
                _paired(rows, g[repeat(r)], g[other], comparison(r, key, col), arm=repeat(r), against=other,
                        setting=matched[key], quantity=col)
    return table(rows)


def run(profile: str = "default", ctx: Context | None = None) -> pd.DataFrame:
    """Train (or read back) the runs; score every block, every application and the last m
    applications jointly; count fan-in; compare the arms; write."""
    ctx, started, p, runs, results = start(NAME, configs, profile, ctx)
    units = ablation_units(runs, results, p.importance, ctx)
    units["arm"] = units["variant"].map(arm)
    groups = last_group(units)
    apps, joint = application_tables(runs, results, p.importance, max(p.repetition.repeats), units)
    fanin = fan_in_table(runs, results)
    summary = summarize(groups, p.repetition.repeats, apps, joint, fanin)
    return finish(ctx, NAME, units, summary, results, started, last_group=groups, applications=apps,
                  joint=joint, fanin=fanin)
