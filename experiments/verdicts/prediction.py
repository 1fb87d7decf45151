"""Beyond the paper: hypotheses H6-H7 of the prediction study (:mod:`experiments.prediction`).

The mechanism study's best account of the profile of ``A`` (the full product of measured gains)
is fed with gains averaged over the run it describes. H6 asks whether gains measured before
training (and in its first percent) predict the trained profile as well; H7 whether putting the
norms' own Jacobian gains into the account brings Post-LN, which defeated every account there,
to the Pre-LN level. Both were written, with their margin
(:data:`~experiments.verdicts.toolkit.THRESHOLDS` ``prediction_margin``), before the study's
tables were read.

The tested account is the product with norm gains (:data:`ACCOUNT`, :data:`NORMS`), the one
``gfa taper --predict`` uses. Errors are per run (:func:`gfa_theory.theory.gains.log_profile_error`);
comparisons are paired by seed (3 clusters: t with G - 1 df).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from gfa_theory.instrument import stats

from .. import prediction as pred
from ..summary import pick, without_single_interval
from .toolkit import (FAILS, HOLDS, INCONCLUSIVE, MIXED, THRESHOLDS as T, Estimate, Finding, Regime, defined,
                      missing, noninferior_p, significant, tost, undefined)

ACCOUNT, NORMS = "product", "with_norms"
REFERENCE_WINDOW = "training"  # H6: what the early windows are compared with
PRIMARY_WINDOW = "init"  # H6's verdict; the 1 % and 5 % windows are reported beside it
REPORTED_WINDOWS = ("1%", "5%")
H7_WINDOW = "training"  # H7: the mechanism study's gains, now with the norms'
H7_ARM, H7_REFERENCE = "post", "pre"


def _errors(tables: dict, norms: str = NORMS) -> pd.DataFrame:
    e = tables["errors"]
    return e[(e["account"] == ACCOUNT) & (e["norms"] == norms)]


def _by_seed(e: pd.DataFrame, **where) -> pd.Series:
    m = np.ones(len(e), bool)
    for k, v in where.items():
        m &= (e[k] == v).to_numpy()
    return e[m].set_index("seed")["log_error"].sort_index()


def paired(a: pd.Series, b: pd.Series) -> pd.Series:
    """``a - b`` paired by seed: mean, t-interval (df = seeds - 1), se, df, paired-t p."""
    seeds = sorted(set(a.index) & set(b.index))
    return pd.Series(without_single_interval(stats.paired_difference(a[seeds], b[seeds])))


def regime(tables: dict, families: tuple[str, ...], arms: tuple[str, ...] | None = None) -> Regime | None:
    """The models the study trained (its ``runs`` table; ``arms``: only those): parameters and
    tokens per parameter."""
    r = tables.get("runs")
    if r is None or r.empty:
        return None
    r = r[r["family"].isin(families) & (r["arm"].isin(arms) if arms is not None else True)]
    tpp = r["tokens_per_param"].dropna()
    return Regime(" and ".join(f for f in families if (r["family"] == f).any()), int(r["params"].min()),
                  int(r["params"].max()), float(tpp.min()) if len(tpp) else np.nan,
                  float(tpp.max()) if len(tpp) else np.nan)


def _arms(e: pd.DataFrame) -> list[str]:
    order = [*pred.ARMS, pred.RESNET_ARM]
    return [a for a in order if (e["arm"] == a).any()]


H6_RULE = (f"Per arm (every placement and the ResNet), paired by seed: d = error({ACCOUNT} with norm gains measured "
           f"at {PRIMARY_WINDOW}) - error({ACCOUNT} with norm gains averaged over training), mean with a t-interval "
           f"over seeds (t with G - 1 df). Non-inferior if the one-sided test of d >= {T.prediction_margin:g} "
           f"rejects at alpha = {T.alpha:g} after Holm across arms. Holds if non-inferior on every arm; mixed if on "
           f"some; does not hold if on none and on some arm d's interval lies above the margin; inconclusive "
           f"otherwise. The same test at the {' and '.join(REPORTED_WINDOWS)} windows is reported (arms table)")


def window_tests(e: pd.DataFrame, window: str, arms: list[str]) -> tuple[list[pd.Series], np.ndarray]:
    """Per arm: ``error(window) - error(training)`` paired by seed, and the Holm-adjusted
    non-inferiority p-values across arms."""
    rows = [paired(_by_seed(e, arm=a, window=window), _by_seed(e, arm=a, window=REFERENCE_WINDOW)) for a in arms]
    p = stats.holm([noninferior_p(r, T.prediction_margin) if defined(r) else np.nan for r in rows])
    return rows, p


def h6(tables: dict) -> Finding:
    e = _errors(tables)
    arms = _arms(e)
    if not arms:
        return missing("no prediction runs")
    reg = regime(tables, ("transformer", "resnet"))
    found = {}
    arm_rows = []
    for window in (PRIMARY_WINDOW, *REPORTED_WINDOWS):
        rows, p = window_tests(e, window, arms)
        found[window] = (rows, p)
        arm_rows += [{"window": window, "arm": a, "d": r["estimate"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                      "n": int(r["n"]), "Holm p (non-inferior)": q, "non-inferior": bool(significant([q])[0])}
                     for a, r, q in zip(arms, rows, p)]
    rows, p = found[PRIMARY_WINDOW]
    # the primary estimate: per seed, d averaged over arms (a summary; the verdict is per arm)
    per_seed = pd.concat([_by_seed(e, arm=a, window=PRIMARY_WINDOW) - _by_seed(e, arm=a, window=REFERENCE_WINDOW)
                          for a in arms], axis=1).mean(axis=1, skipna=False).dropna()
    m, lo, hi = stats.mean_ci(per_seed)
    primary = Estimate(f"error({PRIMARY_WINDOW}) - error({REFERENCE_WINDOW}), {ACCOUNT} with norm gains, mean over "
                       f"{len(arms)} arms", m, lo, hi, len(per_seed), unit="seeds")
    secondary = tuple(Estimate.of(r, f"{a}: error({PRIMARY_WINDOW}) - error({REFERENCE_WINDOW})", unit="seeds", p=q,
                                  p_name="Holm non-inferiority p") for a, r, q in zip(arms, rows, p))
    table = pd.DataFrame(arm_rows)
    base = {"primary": primary, "margin": T.prediction_margin, "secondary": secondary, "arms": table, "regime": reg}
    if not defined(*rows):
        return Finding(INCONCLUSIVE, why="a difference is undefined (fewer than 2 seeds or no spread)", **base)
    ok = significant(p)
    above = [a for a, r in zip(arms, rows) if r["ci_low"] > T.prediction_margin]
    early = {w: int(significant(found[w][1]).sum()) for w in REPORTED_WINDOWS}
    also = "; non-inferior at " + ", ".join(f"{w} on {k} of {len(arms)}" for w, k in early.items())
    if ok.all():
        return Finding(HOLDS, why=f"init gains non-inferior on every arm ({len(arms)}){also}", **base)
    if ok.any():
        return Finding(MIXED, why=f"init gains non-inferior on {int(ok.sum())} of {len(arms)} arms "
                                  f"({', '.join(a for a, k in zip(arms, ok) if k)}){also}", **base)
    if above:
        return Finding(FAILS, why=f"init gains worse beyond the margin on {', '.join(above)}{also}", **base)
    return Finding(INCONCLUSIVE, why=f"on no arm within or beyond the margin{also}", **base)


H7_RULE = (f"Paired by seed: d = error(Post-LN) - error(Pre-LN), {ACCOUNT} account with norm gains averaged over "
           f"training, mean with a t-interval over seeds (t with G - 1 df). Holds if TOST shows |d| < "
           f"{T.prediction_margin:g} at alpha = {T.alpha:g}; does not hold if d's 95 % interval lies entirely outside "
           f"+-{T.prediction_margin:g}; inconclusive otherwise. Reported beside it: the same difference without norm "
           f"gains, at the init window, and for DeepNorm and Mix-LN")


def h7(tables: dict) -> Finding:
    e, plain = _errors(tables), _errors(tables, "without_norms")
    if not ((e["arm"] == H7_ARM).any() and (e["arm"] == H7_REFERENCE).any()):
        return missing("no Post-LN and Pre-LN prediction runs")
    reg = regime(tables, ("transformer",), (H7_ARM, H7_REFERENCE))

    def diff(errs, arm, window=H7_WINDOW):
        return paired(_by_seed(errs, arm=arm, window=window), _by_seed(errs, arm=H7_REFERENCE, window=window))

    d = diff(e, H7_ARM)
    label = f"error(post) - error(pre), {ACCOUNT} with norm gains, {H7_WINDOW} gains"
    secondary = [Estimate.of(diff(plain, H7_ARM), f"error(post) - error(pre), without norm gains", unit="seeds"),
                 Estimate.of(diff(e, H7_ARM, PRIMARY_WINDOW), f"error(post) - error(pre), with norm gains, "
                             f"{PRIMARY_WINDOW} gains", unit="seeds"),
                 Estimate.of(paired(_by_seed(plain, arm=H7_ARM, window=H7_WINDOW),
                                    _by_seed(e, arm=H7_ARM, window=H7_WINDOW)),
                             "post: error without - error with norm gains", unit="seeds")]
    secondary += [Estimate.of(diff(e, a), f"error({a}) - error(pre), with norm gains", unit="seeds")
                  for a in ("deepnorm", "mix") if (e["arm"] == a).any()]
    if not defined(d):
        return undefined(primary=Estimate.of(d, label, unit="seeds"), secondary=tuple(secondary))
    t = tost(d, T.prediction_margin)
    primary = Estimate.of(d, label, unit="seeds", p=t["p"], p_name="TOST p")
    base = {"primary": primary, "margin": T.prediction_margin, "secondary": tuple(secondary), "regime": reg}
    if t["p"] < T.alpha:
        return Finding(HOLDS, why=f"Post-LN within {T.prediction_margin:g} of Pre-LN (TOST)", **base)
    if d["ci_low"] > T.prediction_margin or d["ci_high"] < -T.prediction_margin:
        side = "above" if d["ci_low"] > T.prediction_margin else "below"
        return Finding(FAILS, why=f"Post-LN's error differs from Pre-LN's by {d['estimate']:.3f}, {side} the margin "
                                  f"{T.prediction_margin:g}", **base)
    return Finding(INCONCLUSIVE, why="neither equivalent within the margin nor beyond it", **base)


def design(tables: dict | None) -> tuple[Estimate, ...]:
    """The exploratory design comparison (no verdict): ``predicted - primary`` and ``predicted -
    narrow`` held-out loss, paired by seed, from the study's summary rows (``setting = design``)."""
    if tables is None or "summary" not in tables:
        return ()
    s = tables["summary"]
    out = []
    for against in pred.DESIGN_AGAINST:
        r = pick(s, setting="design", quantity="loss_gap", arm=pred.PREDICTED, against=against)
        if r is not None:
            same = str(r["subset"]) == "same runs"  # the predicted widths rounded to this arm's
            out.append(Estimate.of(r, f"{pred.PREDICTED} - {against}: held-out loss (exploratory)", unit="seeds",
                                   note=f"no verdict{'; the same widths, hence the same runs' if same else ''}"))
    return tuple(out)
