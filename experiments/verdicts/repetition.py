"""Claim C7: parameter-shared repetition (study 4, :mod:`experiments.repetition`)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from gfa_theory.instrument import stats

from .. import repetition as rep
from ..summary import pick
from .toolkit import (INCONCLUSIVE, THRESHOLDS as T, Estimate, Finding, defined, signed, significant, superiority,
                      tost, undefined)

C7_RULE = (f"Primary measure, fixed before the results were read: the equal-applications joint ablation, the "
           f"held-out loss increase (nats) when the last r block applications are skipped together, in the model "
           f"with the last block applied r times, in its parameter-matched control (the B-block baseline) and in its "
           f"compute-matched control (B + r - 1 unshared blocks), so every arm loses r applications. For every r the "
           f"paired differences repeat - parameter-matched (restores) and repeat - compute-matched (elevates); "
           f"two-sided paired-t p-values Holm-adjusted over all comparisons; 'no difference' = TOST within "
           f"+-{T.rep_margin_nats:g} nats, Holm-adjusted. Holds if every difference is positive-significant; "
           f"mixed if some are; does not hold if none is and some is negative-significant or equivalent (TOST); "
           f"inconclusive otherwise, and whenever repetition did not raise the last group's fan-in above both "
           f"controls' (manipulation check, autograd path counts). Per-application importance and the group "
           f"importance shares are reported, not counted")

MATCHED = ("parameter-matched", "compute-matched")


def repeats(summary: pd.DataFrame) -> list[int]:
    """The repetition counts r with a primary comparison (the ``m`` of those rows)."""
    d = summary[(summary["quantity"] == rep.PRIMARY) & summary["against"].fillna("").astype(bool)]
    return sorted({int(m) for m in d["m"]})


def fan_in_check(summary: pd.DataFrame, r: int) -> tuple[bool, dict]:
    """Did repetition raise the last group's fan-in (autograd path count) above both controls'?"""
    arms = [rep.repeat(r), rep.BASELINE, rep.control(r)]
    rows = {a: pick(summary, arm=a, against="", quantity="last_F_paths") for a in arms}
    if any(v is None for v in rows.values()):
        return False, {}
    f = {a: float(v.estimate) for a, v in rows.items()}
    return f[arms[0]] > max(f[arms[1]], f[arms[2]]), f


def c7(summary: pd.DataFrame) -> Finding:
    """Repetition must raise the joint delta-loss of the last r applications above both controls'."""
    rows, names, table = [], [], []
    for r in repeats(summary):
        ok, f = fan_in_check(summary, r)
        for other, name in ((rep.BASELINE, MATCHED[0]), (rep.control(r), MATCHED[1])):
            d = pick(summary, arm=rep.repeat(r), against=other, quantity=rep.PRIMARY, m=r)
            if d is None:
                continue
            rows.append(d)
            names.append(f"r = {r} vs {name}")
            absolute = {a: pick(summary, arm=a, against="", quantity=rep.PRIMARY, m=r) for a in (rep.repeat(r), other)}
            table.append({"r": r, "control": name, "repeat joint delta-loss": absolute[rep.repeat(r)].estimate,
                          "control joint delta-loss": absolute[other].estimate, "difference": d.estimate,
                          "ci_low": d.ci_low, "ci_high": d.ci_high, "n": int(d.n_groups),
                          "last-group fan-in (repeat)": f.get(rep.repeat(r), np.nan),
                          "last-group fan-in (control)": f.get(other, np.nan), "fan-in raised": ok})
    if not rows or not defined(*rows):
        return undefined("equal-applications joint delta-loss undefined")
    p, pos, neg = signed(rows)
    p_eq = stats.holm([tost(r, T.rep_margin_nats)["p"] for r in rows])
    equiv = significant(p_eq)
    arms = pd.DataFrame(table).assign(**{"Holm p": p, "TOST Holm p": p_eq})
    est = [Estimate.of(r, f"{n}: joint delta-loss, repeat - control (nats)", "+.3f", "seeds", p=q, p_name="Holm p")
           for r, n, q in zip(rows, names, p)]
    found = {"primary": est[0], "margin": T.rep_margin_nats, "secondary": tuple(est[1:]), "arms": arms}
    if not arms["fan-in raised"].all():
        return Finding(INCONCLUSIVE, why="repetition did not raise the last group's fan-in", **found)
    verdict = superiority(pos, neg | equiv, True)
    if pos.all():
        why = "repetition's late applications matter more than both controls' at every r"
    elif pos.any():
        why = f"higher in {int(pos.sum())} of {len(rows)} comparisons"
    elif (neg | equiv).any():
        why = (f"no comparison higher; {int(neg.sum())} of {len(rows)} lower, {int(equiv.sum())} equivalent "
               f"within +-{T.rep_margin_nats:g} nats")
    else:
        why = "no comparison significant"
    return Finding(verdict, why=why, **found)
