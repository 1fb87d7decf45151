"""Claim C6: equalizing what each block learns (study 3, :mod:`experiments.equalization`)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from gfa_theory.instrument import stats

from .. import equalization as eq
from ..summary import need, pick
from .toolkit import (FAILS, HOLDS, INCONCLUSIVE, MIXED, THRESHOLDS as T, Estimate, Finding, defined, exact_p,
                      significant, tost, tost_power, undefined)

C6_RULE = (f"Per optimizer, the primary comparison (SGD: gradient equalize vs its effective-lr control global_rescale, "
           f"each at its tuned lr; AdamW: per-block update equalization vs baseline), paired by seed: the change in "
           f"the late-half ablation delta-loss (nats), TOST against +-{T.eq_late_margin_pct:g} % of the "
           f"control's mean, Holm over the two optimizers. Manipulation check first: the arm's mean CV of U "
           f"across blocks must be at most {T.eq_cv_ratio:g} x its control's, else that comparison is "
           f"inconclusive (it did not equalize what the blocks learned). Holds if both are equivalent; mixed if one "
           f"is and the other rises significantly (Holm, above 0); does not hold if none is equivalent and some "
           f"rises; inconclusive otherwise (a non-significant change is not 'does not restore'). Reported, not "
           f"counted: the late-half share change (TOST +-{T.share_margin:g}), the AdamW gradient placebo, SGD "
           f"vs baseline and without clipping, validation loss. Power: a paired TOST at true change 0 has power "
           f"2 * P1 - 1, P1 the one-sided t-test power at effect margin / SD (statsmodels TTestPower), with the "
           f"observed SD; the seeds needed for {T.power:.0%} power are printed")

OPTIMIZERS = ("adamw", "sgd")


def arm_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer's primary comparison: tuned lrs, the manipulation check, the late-half
    delta-loss of the control and its change, the margin, TOST p and power."""
    rows = []
    for opt in OPTIMIZERS:
        arm, ctl = eq.PRIMARY[opt]
        d = need(summary, arm=arm, against=ctl, quantity="late_dloss")
        base = need(summary, arm=ctl, against="", quantity="late_dloss")
        cv_a, cv_c = need(summary, arm=arm, against="", quantity="cv_U"), need(summary, arm=ctl, against="",
                                                                                   quantity="cv_U")
        margin = T.eq_late_margin_pct / 100 * abs(float(base.estimate))
        lrs = [pick(summary, arm=a, quantity="tuned_lr") for a in (arm, ctl)]
        power = tost_power(d, margin) if margin > 0 else None
        rows.append({"optimizer": opt, "arm": arm, "control": ctl,
                     "tuned lr": lrs[0].estimate if lrs[0] is not None else np.nan,
                     "control tuned lr": lrs[1].estimate if lrs[1] is not None else np.nan,
                     "cv_U": cv_a.estimate, "control cv_U": cv_c.estimate,
                     "equalized": bool(np.isfinite([cv_a.estimate, cv_c.estimate]).all()
                                       and cv_a.estimate <= T.eq_cv_ratio * cv_c.estimate),
                     "control late delta-loss": base.estimate, "change": d.estimate, "change ci_low": d.ci_low,
                     "change ci_high": d.ci_high, "n": int(d.n_groups), "margin": margin,
                     "tost p": tost(d, margin)["p"] if margin > 0 else np.nan,
                     "power": power.power if power else np.nan, "seeds needed": power.needed if power else np.nan,
                     "_row": d})
    return pd.DataFrame(rows)


def c6(summary: pd.DataFrame) -> Finding:
    """Equalizing what each block learns must leave the late blocks' delta-loss unchanged, in the
    comparisons whose manipulation worked (SGD against its effective-lr control; AdamW per update)."""
    arms = arm_table(summary)
    rows, margins, valid = list(arms["_row"]), arms["margin"].to_numpy(float), arms["equalized"].to_numpy(bool)
    est = [Estimate.of(r, f"{a} - {c}: late-half delta-loss change (nats)", "+.4f", "seeds", p=p, p_name="TOST p")
           for r, a, c, p in zip(rows, arms["arm"], arms["control"], arms["tost p"])]
    secondary = list(est[1:])
    for a, c in eq.PRIMARY.values():
        share = pick(summary, arm=a, against=c, quantity="late_half_share")
        if share is not None:
            secondary.append(Estimate.of(share, f"{a} - {c}: late-half share change", "+.3f", "seeds"))
    placebo = pick(summary, arm="adamw/equalize", against="", quantity="cv_U")
    if placebo is not None:
        secondary.append(Estimate.of(placebo, "AdamW gradient-equalization placebo: CV of U", ".3f", "seeds"))
    found = {"primary": est[0], "margin": float(margins[0]), "secondary": tuple(secondary),
             "arms": arms.drop(columns="_row")}
    if not defined(*rows) or not (margins > 0).all():
        return Finding(INCONCLUSIVE, why="a statistic is undefined", **found)
    equiv = valid & significant(stats.holm([tost(r, m)["p"] for r, m in zip(rows, margins)]))
    rises = valid & significant(stats.holm([exact_p(r) for r in rows])) & np.array([r.estimate > 0 for r in rows])
    if equiv.all():
        return Finding(HOLDS, why="late-block value unchanged within the margin under both optimizers", **found)
    if equiv.any() and rises.any():
        return Finding(MIXED, why="unchanged under " + ", ".join(arms["optimizer"][equiv]) + ", restored under "
                       + ", ".join(arms["optimizer"][rises]), **found)
    if rises.any() and not equiv.any():
        return Finding(FAILS, why="equalizing restored late-block value under " + ", ".join(arms["optimizer"][rises]),
                       **found)
    if not valid.all():
        why = "the manipulation check failed for " + ", ".join(arms["optimizer"][~valid])
    else:
        need_ = ", ".join(f"{x:.0f} ({o})" for x, o in zip(arms["seeds needed"], arms["optimizer"]) if np.isfinite(x))
        why = (f"underpowered: {need_} seeds needed for {T.power:.0%} TOST power ({int(arms['n'].min())} run)"
               if need_ else "neither equivalence nor a rise is shown")
    return Finding(INCONCLUSIVE, why=why, **found)
