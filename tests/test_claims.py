"""Every claim rule (C1-C11, experiments/verdicts) on small synthetic tables shaped like the studies'
tables: each rule reaches each of its verdicts (holds, mixed, does not hold, inconclusive), no test
accepts more than one verdict, and the asserts read the finding's fields, never its prose."""
import math

import numpy as np
import pandas as pd
import pytest

from experiments import equalization as eq
from experiments import repetition as rep
from experiments.summary import keyed
from experiments.verdicts import BY_KEY, CLAIMS, judge, judge_all, render
from experiments.verdicts import cascadeformer as c8r
from experiments.verdicts import equalization as c6r
from experiments.verdicts import fanin, importance
from experiments.verdicts import pruning as prr
from experiments.verdicts import repetition as c7r
from experiments.verdicts.toolkit import FAILS, HOLDS, INCONCLUSIVE, MISSING, MIXED, THRESHOLDS as RULES, Verdict
from gfa_theory.instrument import stats

NAN = float("nan")


def _se(lo, hi, n):
    return stats.se_from_interval(lo, hi, n) if np.isfinite([lo, hi]).all() and lo != hi else (
        0.0 if np.isfinite(lo) else NAN)


def _r(key, est, lo, hi, p=NAN, n=9):
    """A summary row under ``key`` whose SE and df are those of its 95 % t-interval over n runs."""
    return keyed({"test": "synthetic", "estimate": est, "se": _se(lo, hi, n), "df": n - 1, "ci_low": lo,
                  "ci_high": hi, "p": p, "r2": NAN, "n": n * 6, "n_groups": n, "method": "synthetic"}, **key)


def _check(found, expected):
    assert isinstance(found.verdict, Verdict)
    assert found.verdict == expected, (found.verdict, found.why)
    assert found.why  # every verdict says why, in one short sentence
    assert len(found.why) < 200, found.why
    return found


# ---- C2 / C3 -----------------------------------------------------------------------------------

def _fanin(family, rho, e, e1):
    key = {"family": family, "setting": "final", "predictor": "linear"}
    return pd.DataFrame([_r({**key, "quantity": "spearman"}, *rho),
                         _r({**key, "quantity": "exponent"}, *e),
                         _r({**key, "quantity": "exponent", "subset": "no_first_block"}, *e1),
                         _r({**key, "quantity": "exponent_depth"}, *e),
                         _r({**key, "quantity": "exponent_pooled"}, *e)])


PROP, FLAT = (1.0, 0.97, 1.03), (0.3, 0.2, 0.4)


@pytest.mark.parametrize("rule,family", [(fanin.c2, "transformer"), (fanin.c3, "resnet")])
@pytest.mark.parametrize("rho,e,e1,expected", [
    ((0.9, 0.8, 1.0), PROP, PROP, HOLDS),  # order and shape
    ((0.9, 0.8, 1.0), PROP, FLAT, MIXED),  # proportional only with the first block: order only
    ((0.9, 0.8, 1.0), FLAT, FLAT, MIXED),  # the order follows, the magnitude does not
    ((0.1, -0.2, 0.4), PROP, PROP, FAILS),  # rho below 0.5 and not above 0
    ((0.4, -0.1, 0.9), PROP, PROP, INCONCLUSIVE),  # rho undecided
    ((0.9, NAN, NAN), PROP, PROP, INCONCLUSIVE),  # undefined
], ids=["holds", "mixed-first-block", "mixed-not-proportional", "fails", "inconclusive", "undefined"])
def test_follows_rule(rule, family, rho, e, e1, expected):
    found = _check(rule(_fanin(family, rho, e, e1)), expected)
    assert found.primary.estimate == rho[0] and found.margin == RULES.min_rho and found.primary.n == 9
    assert [x.estimate for x in found.secondary[:2]] == [e[0], e1[0]]  # with and without the first block


def test_follows_names_the_first_block_when_it_carries_the_decay():
    found = fanin.c2(_fanin("transformer", (0.9, 0.8, 1.0), (0.5, 0.45, 0.55), (0.2, 0.15, 0.25)))
    assert found.verdict == MIXED and "exponent 0.20 without it" in found.why


def test_follows_reports_no_spread_as_such():
    found = fanin.c2(_fanin("transformer", (1.0, 1.0, 1.0), PROP, PROP))
    assert render.interval(found.primary) == "all 9 runs: 1.000"


# ---- C4 ----------------------------------------------------------------------------------------

def _deep(family, aic, q, q1, lin, l1):
    key = {"family": family, "setting": "all", "quantity": "exponent"}
    return [_r({"family": family, "setting": "all", "quantity": "aic_quadratic_minus_linear"}, aic, NAN, NAN),
            _r({**key, "predictor": "quadratic"}, *q),
            _r({**key, "predictor": "quadratic", "subset": "no_first_block"}, *q1),
            _r({**key, "predictor": "linear"}, *lin),
            _r({**key, "predictor": "linear", "subset": "no_first_block"}, *l1)]


STEEP = (2.0, 1.9, 2.1)
QUAD = (-10.0, PROP, PROP, STEEP, STEEP)
LINEAR = (10.0, FLAT, FLAT, PROP, PROP)


@pytest.mark.parametrize("transformer,resnet,expected", [
    (QUAD, QUAD, HOLDS),
    (LINEAR, LINEAR, FAILS),
    (QUAD, LINEAR, MIXED),  # the families disagree
    ((-10.0, PROP, FLAT, STEEP, PROP), None, MIXED),  # quadratic with the first block, linear without it
    ((0.5, FLAT, FLAT, FLAT, FLAT), None, INCONCLUSIVE),  # neither profile fits or is preferred
    ((NAN, PROP, PROP, STEEP, STEEP), None, INCONCLUSIVE),
], ids=["holds", "fails-linear", "mixed-families", "mixed-first-block", "inconclusive", "undefined"])
def test_c4_rule(transformer, resnet, expected):
    rows = _deep("transformer", *transformer) + (_deep("resnet", *resnet) if resnet else [])
    found = _check(fanin.c4(pd.DataFrame(rows)), expected)
    assert found.margin == RULES.aic_threshold
    assert found.primary.estimate == transformer[0] or not np.isfinite(transformer[0])
    assert len(found.secondary) == (9 if resnet else 4)  # every exponent (and the other family's AIC)


# ---- C5 ----------------------------------------------------------------------------------------

def _importance(slope_p, ex_p, sign=1.0):
    rows = []
    for fam in ("transformer", "resnet"):
        abl = {"family": fam, "arm": "ablation"}
        rows += [_r({**abl, "quantity": "ols_depth"}, sign * 2.0, sign * 1.5, sign * 2.5, slope_p),
                 _r({**abl, "quantity": "spearman", "subset": "no_first_block"}, sign * 0.5, -0.1, 0.9, ex_p),
                 _r({**abl, "quantity": "spearman"}, 0.7, 0.5, 0.9, 1e-4),
                 _r({"family": fam, "quantity": "first_share_ablation"}, 0.9, 0.85, 0.95),
                 _r({"family": fam, "quantity": "first_share_A"}, 0.5, 0.45, 0.55),
                 _r({"family": fam, "quantity": "first_dloss"}, 1.4, 1.1, 1.6),
                 _r({"family": fam, "quantity": "rest_dloss"}, 0.02, 0.01, 0.03)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("slope_p,ex_p,sign,expected", [
    (1e-6, 1e-3, 1.0, HOLDS),
    (1e-6, 0.4, 1.0, MIXED),  # not without the first block
    (1e-6, 0.4, -1.0, FAILS),  # importance falls with A
    (0.4, 0.4, 1.0, INCONCLUSIVE),
], ids=["holds", "mixed", "fails", "inconclusive"])
def test_c5_rule(slope_p, ex_p, sign, expected):
    found = _check(importance.c5(_importance(slope_p, ex_p, sign)), expected)
    assert found.primary.estimate == sign * 2.0 and found.primary.p == slope_p
    assert len(found.secondary) == 13  # the other tested and reported rows of both families


def test_c5_is_holm_adjusted():
    # four p-values of 0.01: Holm's adjusted values are all 0.04, every test passes
    assert importance.c5(_importance(0.01, 0.01)).verdict == HOLDS
    # four of 0.02 would each pass unadjusted; adjusted (0.08) none does
    assert importance.c5(_importance(0.02, 0.02)).verdict == INCONCLUSIVE


# ---- C6 ----------------------------------------------------------------------------------------

# paired changes of the late-half delta-loss (control mean 0.2 nats: margin +-0.05 at 25 %)
NONE, RISE, WIDE = (0.0, -0.01, 0.01, 0.9), (0.1, 0.08, 0.12, 0.001), (0.0, -0.2, 0.2, 0.9)
EQUALIZED, NOT_EQUALIZED = 0.02, 0.3  # the arm's mean CV of U across blocks; the control's is 0.3


def _equalization(adamw, sgd, cv=(EQUALIZED, EQUALIZED), control=0.2):
    rows = []
    for opt, d, cv_arm in (("adamw", adamw, cv[0]), ("sgd", sgd, cv[1])):
        arm, ctl = eq.PRIMARY[opt]
        rows += [_r({"arm": ctl, "quantity": "late_dloss"}, control, control * 0.75, control * 1.25, n=3),
                 _r({"arm": arm, "against": ctl, "setting": "primary", "quantity": "late_dloss"}, *d, n=3),
                 _r({"arm": arm, "quantity": "cv_U"}, cv_arm, cv_arm * 0.9, cv_arm * 1.1, n=3),
                 _r({"arm": ctl, "quantity": "cv_U"}, 0.3, 0.25, 0.35, n=3)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("adamw,sgd,cv,expected", [
    (NONE, NONE, (EQUALIZED, EQUALIZED), HOLDS),
    (NONE, RISE, (EQUALIZED, EQUALIZED), MIXED),
    (RISE, RISE, (EQUALIZED, EQUALIZED), FAILS),
    (WIDE, WIDE, (EQUALIZED, EQUALIZED), INCONCLUSIVE),  # a non-significant change is not support
    (NONE, WIDE, (EQUALIZED, EQUALIZED), INCONCLUSIVE),
    # a manipulation that did not equalize cannot test the claim: neither its equivalence nor its rise counts
    (NONE, NONE, (EQUALIZED, NOT_EQUALIZED), INCONCLUSIVE),
    (NONE, RISE, (EQUALIZED, NOT_EQUALIZED), INCONCLUSIVE),
    (RISE, RISE, (NOT_EQUALIZED, NOT_EQUALIZED), INCONCLUSIVE),
], ids=["holds", "mixed", "fails", "inconclusive-wide", "inconclusive-one-undecided",
        "inconclusive-sgd-not-equalized", "rise-without-manipulation", "no-manipulation"])
def test_c6_rule(adamw, sgd, cv, expected):
    found = _check(c6r.c6(_equalization(adamw, sgd, cv)), expected)
    arms = found.arms.set_index("optimizer")
    assert found.primary.estimate == adamw[0] and found.margin == pytest.approx(0.05)
    assert list(arms["equalized"]) == [c == EQUALIZED for c in cv]
    assert np.isfinite(arms["tost p"]).all() and (arms["seeds needed"] >= 2).all()
    if NOT_EQUALIZED in cv and expected == INCONCLUSIVE:
        assert "manipulation check failed" in found.why


def test_c6_underpowered_says_how_many_seeds():
    found = c6r.c6(_equalization(WIDE, WIDE))
    need = found.arms["seeds needed"]
    assert found.verdict == INCONCLUSIVE and found.why.startswith("underpowered")
    assert f"{need.iloc[0]:.0f} (adamw)" in found.why and need.iloc[0] > 3


def test_c6_margin_is_relative_to_the_control_and_holm_adjusted():
    # the same change of 0.04 nats: inside +-25 % of a 0.2-nat control (0.05), outside for 0.1 (0.025)
    near = (0.04, 0.035, 0.045, 0.001)
    assert c6r.c6(_equalization(near, near)).verdict == HOLDS
    assert c6r.c6(_equalization(near, near, control=0.1)).verdict == FAILS
    # a control with no late delta-loss leaves no margin: undefined, never "holds"
    assert c6r.c6(_equalization(NONE, NONE, control=0.0)).verdict == INCONCLUSIVE


def test_c6_margins_are_in_the_rule():
    rule = c6r.C6_RULE
    assert f"+-{RULES.eq_late_margin_pct:g} %" in rule and f"{RULES.eq_cv_ratio:g} x" in rule
    assert f"+-{RULES.share_margin:g}" in rule and "TTestPower" in rule and "Holm" in rule


# ---- C7 ----------------------------------------------------------------------------------------

def _repetition(vs_base, vs_ctl, fan_in=(10, 3, 5), r=2):
    """A repetition summary for r: the primary comparisons, the arms' joint delta-loss, the
    last-group fan-in (repeat, baseline, control) and a secondary row."""
    rows = [_r({"arm": rep.repeat(r), "against": rep.BASELINE, "quantity": rep.PRIMARY, "m": r}, *vs_base, n=3),
            _r({"arm": rep.repeat(r), "against": rep.control(r), "quantity": rep.PRIMARY, "m": r}, *vs_ctl, n=3),
            _r({"arm": rep.repeat(r), "against": rep.control(r), "quantity": "last_share"}, 0.01, 0.005, 0.015, 0.01,
               n=3)]
    for a, f in zip((rep.repeat(r), rep.BASELINE, rep.control(r)), fan_in):
        rows += [_r({"arm": a, "quantity": rep.PRIMARY, "m": r}, 0.2, 0.1, 0.3, n=3),
                 _r({"arm": a, "quantity": "last_F_paths"}, f, f, f, n=3)]
    return pd.DataFrame(rows)


UP, DOWN, FLATD = (0.05, 0.03, 0.07, 0.001), (-0.05, -0.07, -0.03, 0.001), (0.01, -0.05, 0.07, 0.6)
SAME = (0.001, -0.004, 0.006, 0.5)  # 90 % interval well inside +-0.02 nats at n = 3: equivalent


@pytest.mark.parametrize("vs_base,vs_ctl,fan_in,expected", [
    (UP, UP, (10, 3, 5), HOLDS),
    (UP, FLATD, (10, 3, 5), MIXED),
    (DOWN, FLATD, (10, 3, 5), FAILS),  # worse than the parameter-matched control
    (FLATD, SAME, (10, 3, 5), FAILS),  # no difference to the compute-matched control (TOST)
    (FLATD, FLATD, (10, 3, 5), INCONCLUSIVE),  # neither difference nor equivalence
    (UP, UP, (5, 3, 5), INCONCLUSIVE),  # manipulation failed: fan-in not above the control's
    ((NAN, NAN, NAN, NAN), UP, (10, 3, 5), INCONCLUSIVE),  # undefined
], ids=["holds", "mixed", "fails-negative", "fails-equivalent", "inconclusive", "manipulation-failed", "undefined"])
def test_c7_rule(vs_base, vs_ctl, fan_in, expected):
    found = _check(c7r.c7(_repetition(vs_base, vs_ctl, fan_in)), expected)
    if found.arms is not None:
        assert list(found.arms["control"]) == list(c7r.MATCHED) and found.margin == RULES.rep_margin_nats
        assert list(found.arms["fan-in raised"]) == [fan_in[0] > max(fan_in[1:])] * 2
        assert found.primary.estimate == vs_base[0] and found.primary.p_name == "Holm p"


def test_c7_manipulation_failure_is_named():
    found = c7r.c7(_repetition(UP, UP, (5, 3, 5)))
    assert found.verdict == INCONCLUSIVE and "did not raise the last group's fan-in" in found.why


def test_c7_margin_and_primary_measure_are_in_the_rule():
    assert f"+-{RULES.rep_margin_nats:g} nats" in c7r.C7_RULE
    assert "equal-applications joint ablation" in c7r.C7_RULE and "compute-matched" in c7r.C7_RULE


# ---- C8 ----------------------------------------------------------------------------------------

AA = {f"aa_{m}_ratio{q}": v for m in ("latency", "throughput") for q, v in (("", 1.0), ("_q25", 0.97), ("_q75", 1.03))}


def _arm(label, role, gap, gap_narrow, lat=1.0, thr=1.0, iqr=0.01, n=3, steps=300):
    """A summary row: ``gap`` / ``gap_narrow`` = (estimate, ci_low, ci_high) of the paired loss gap."""
    row = {"label": label, "schedule": label, "role": role, "steps": steps, "n_seeds": n, "val_loss": 2.2 + gap[0],
           "params_ratio": 0.66, "flops_ratio": 0.65, "tokens_per_param": 1.2, **AA}
    for suffix, (est, lo, hi) in (("", gap), ("_narrow", gap_narrow)):
        row |= {f"loss_gap{suffix}": est, f"loss_gap{suffix}_ci_low": lo, f"loss_gap{suffix}_ci_high": hi,
                f"loss_gap{suffix}_p": 0.5, f"loss_gap{suffix}_n": n, f"loss_gap{suffix}_se": _se(lo, hi, n),
                f"loss_gap{suffix}_df": n - 1}
        row |= {f"ppl_gap{suffix}_pct{k}": 100 * math.expm1(v) for k, v in (("", est), ("_ci_low", lo),
                                                                            ("_ci_high", hi))}
    for mode, m in (("latency", lat), ("throughput", thr)):
        row |= {f"{mode}_ratio": m, f"{mode}_ratio_q25": m - iqr, f"{mode}_ratio_q75": m + iqr}
    return row


ZERO = (0.0, 0.0, 0.0)
TIGHT, LOOSE, WORSE = (0.0, -0.004, 0.004), (0.0, -0.2, 0.2), (0.1, 0.08, 0.12)
BETTER, NARROW_BETTER = (-0.05, -0.07, -0.03), (0.05, 0.03, 0.07)
UNIFORM = _arm("uniform", "reference", ZERO, (-0.05, -0.07, -0.03))
NARROW = _arm("narrow", "control", (0.05, 0.03, 0.07), ZERO, 0.85, 1.2)
FAST, SLIGHT, NOSPEED = (0.85, 1.2), (0.95, 1.05), (1.0, 1.0)


@pytest.mark.parametrize("primary,extra,expected", [
    (_arm("fanin", "primary", TIGHT, BETTER, *FAST), [], HOLDS),
    # comparable and faster, but the narrow model is as good: the saving is explained by size
    (_arm("fanin", "primary", TIGHT, (0.0, -0.004, 0.004), *FAST), [], MIXED),
    # beats narrow, counts beyond the A/A band, but short of the paper's point
    (_arm("fanin", "primary", TIGHT, BETTER, *SLIGHT), [], MIXED),
    (_arm("fanin", "primary", TIGHT, BETTER, *NOSPEED), [], FAILS),  # comparable, no speed beyond A/A
    (_arm("fanin", "primary", WORSE, BETTER, *FAST), [], FAILS),  # worse than uniform beyond the margin
    (_arm("fanin", "primary", TIGHT, NARROW_BETTER, *FAST), [], FAILS),  # shrinking uniformly is better
    (_arm("fanin", "primary", LOOSE, (0.0, -0.2, 0.2), *FAST), [], INCONCLUSIVE),  # too wide to decide
    (_arm("fanin", "primary", (0.0, NAN, NAN), BETTER, *FAST), [], INCONCLUSIVE),  # undefined
    # an exploratory arm that would "hold" does not rescue a primary with no speed: best-of-N is not a test
    (_arm("fanin", "primary", TIGHT, BETTER, *NOSPEED), [_arm("linear", "exploratory", TIGHT, BETTER, *FAST)], FAILS),
], ids=["holds", "mixed-narrow-as-good", "mixed-below-paper", "fails-no-speed", "fails-worse", "fails-narrow-better",
        "inconclusive-wide", "undefined", "exploratory-not-counted"])
def test_c8_rule(primary, extra, expected):
    found = _check(c8r.c8(pd.DataFrame([UNIFORM, NARROW, primary, *extra])), expected)
    arms = found.arms.set_index("label")
    assert set(c8r.TESTS) <= set(arms.columns) and list(arms.index) == ["uniform", "narrow", "fanin",
                                                                        *(e["label"] for e in extra)]
    if expected == HOLDS:
        assert found.primary.p == arms.loc["fanin", "p_comparable"] < RULES.alpha
        assert found.margin == RULES.ppl_margin_pct and [e.note for e in found.secondary[1:]] == ["counts"] * 2
    if extra:
        assert arms.loc["linear", "p_comparable"] < RULES.alpha  # reported, Holm over the exploratory arms


def test_c8_speed_must_clear_the_aa_band():
    # A/A IQR 0.97-1.03, margin 0.01: latency IQR must end <= 0.96, throughput IQR start >= 1.04
    r = pd.Series(_arm("fanin", "primary", TIGHT, BETTER, 0.94, 1.06, iqr=0.005))
    assert c8r.beyond_aa(r, "latency") and c8r.beyond_aa(r, "throughput")
    near = pd.Series(_arm("fanin", "primary", TIGHT, BETTER, 0.96, 1.04, iqr=0.005))  # beyond 1, not the band
    assert not c8r.beyond_aa(near, "latency") and not c8r.beyond_aa(near, "throughput")
    wide = r.copy()
    wide["aa_throughput_ratio_q75"] = 1.05  # a noisier A/A control swallows the same speedup
    assert not c8r.beyond_aa(wide, "throughput")


def test_c8_token_sweep_is_reported_not_counted():
    long = [_arm(n, role, g, gn, *FAST, n=1, steps=1200) for n, role, g, gn in
            (("uniform", "reference", ZERO, ZERO), ("narrow", "control", ZERO, ZERO),
             ("fanin", "primary", WORSE, NARROW_BETTER))]
    found = c8r.c8(pd.DataFrame([UNIFORM, NARROW, _arm("fanin", "primary", TIGHT, BETTER, *FAST), *long]))
    assert found.verdict == HOLDS and sorted(set(found.arms["steps"])) == [300, 1200]


def test_c8_verdict_columns_live_in_the_rules():
    from experiments import cascadeformer as cf

    for name in ("is_comparable", "has_paper_speedup", "PPL_TOLERANCE_PCT", "paper_match", "beyond_aa"):
        assert not hasattr(cf, name)


# ---- C9-C11 (pruning comparisons) --------------------------------------------------------------

def _comp(quantity, method, est, lo, hi, p, model="transformer B=8", family="transformer", stage="", context="",
          k=NAN, n=3):
    return {"test": f"{model} {quantity} {method}", "model": model, "family": family, "depth_B": 8,
            "quantity": quantity, "stage": stage, "context": context, "k": k, "method": method,
            "estimate": est, "se": _se(lo, hi, n), "df": n - 1, "ci_low": lo, "ci_high": hi, "p": p, "n": n,
            "by_construction": method == "last"}


BETTER_LOSS, WORSE_LOSS, EVEN = (-0.1, -0.15, -0.05, 0.001), (0.05, 0.03, 0.07, 0.001), (0.0, -0.1, 0.1, 0.9)


def _c9(kind: dict, default=EVEN, undefined=False):
    rows = [_comp("loss", m, *kind.get(m, default), stage=stage)
            for stage in ("pruned", "healed") for m in (prr.C9_PRIMARY, *prr.C9_RIVALS, "random", "ablation")]
    if undefined:
        rows[1].update(ci_low=NAN, ci_high=NAN)
    rows.append(_comp("loss", "bi", 0.5, 0.4, 0.6, 0.001, model="resnet B=9", family="resnet", stage="pruned"))
    return pd.DataFrame(rows)


# C9's primary cells: (runs differing, estimate, ci_low, ci_high, p) of CascadeFlow - last-k on them
DIFF_BETTER, DIFF_WORSE, DIFF_EVEN = (3, -0.02, -0.03, -0.01, 0.001), (3, 0.02, 0.01, 0.03, 0.001), \
    (3, 0.0, -0.05, 0.05, 0.9)
NEVER, ONE_RUN = (0, NAN, NAN, NAN, NAN), (1, -0.05, NAN, NAN, NAN)


def _depth(cells: dict, default, K=4):
    """A ``depth_order`` table: one Transformer row per k and stage (``cells[k]`` overrides), and a
    ResNet that never differs (not counted)."""
    rows = []
    for k in range(1, K + 1):
        for stage in ("pruned", "healed"):
            g, est, lo, hi, p = cells.get(k, default)
            rows.append({"model": "transformer B=8", "family": "transformer", "depth_B": 8, "stage": stage, "k": k,
                         "n_runs": 3, "n_differ": g, "tau_mean": 0.6, "tau_min": 0.4, "tau_max": 0.8,
                         "estimate": est, "ci_low": lo, "ci_high": hi, "p": p, "n": g})
    rows.append({"model": "resnet B=9", "family": "resnet", "depth_B": 9, "stage": "pruned", "k": 1, "n_runs": 3,
                 "n_differ": 0, "tau_mean": 1.0, "tau_min": 1.0, "tau_max": 1.0, "estimate": NAN, "ci_low": NAN,
                 "ci_high": NAN, "p": NAN, "n": 0})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("cells,primary,secondary,undefined,expected", [
    ({}, DIFF_BETTER, BETTER_LOSS, False, HOLDS),
    ({}, DIFF_BETTER, EVEN, False, MIXED),  # beats depth order, not the other heuristics
    ({1: NEVER}, DIFF_BETTER, BETTER_LOSS, False, MIXED),  # never differs at k = 1: not a win there
    ({}, DIFF_WORSE, EVEN, False, FAILS),
    ({}, DIFF_WORSE, BETTER_LOSS, False, MIXED),
    ({}, DIFF_EVEN, WORSE_LOSS, False, FAILS),  # primary undecided, secondary shows it worse
    ({}, DIFF_EVEN, BETTER_LOSS, False, INCONCLUSIVE),  # the primary part decides
    ({}, NEVER, BETTER_LOSS, False, INCONCLUSIVE),  # never differs: cannot separate from depth order
    ({}, ONE_RUN, BETTER_LOSS, False, INCONCLUSIVE),  # one differing run per cell: no test
    ({}, DIFF_BETTER, BETTER_LOSS, True, INCONCLUSIVE),
], ids=["holds", "mixed-secondary", "mixed-never-differs-at-one-k", "fails", "mixed-worse-than-last",
        "fails-by-secondary", "inconclusive", "inconclusive-never-differs", "inconclusive-one-run", "undefined"])
def test_c9_rule(cells, primary, secondary, undefined, expected):
    found = _check(prr.c9(_c9({}, secondary, undefined), _depth(cells, primary)), expected)
    assert set(found.arms["model"]) == {"transformer B=8"}  # C9 counts Transformers only
    assert {"floor", "oracle"} <= {e.note for e in found.secondary}
    assert found.primary.n == 8 and found.primary.estimate == int(found.arms["better"].sum())


def test_c9_never_differing_cells_are_named_not_won():
    found = _check(prr.c9(_c9({}, BETTER_LOSS), _depth({1: NEVER, 2: ONE_RUN}, DIFF_BETTER)), MIXED)
    cells = found.arms.set_index(["k", "stage"])
    assert not cells.loc[(1, "pruned"), "better"] and not cells.loc[(2, "healed"), "better"]
    assert np.isnan(cells.loc[(2, "healed"), "p_holm"])  # one run, no spread: no test
    assert found.primary.estimate == 4 and "never differs at k = 1" in found.why


def test_c9_primary_is_holm_adjusted_over_testable_cells():
    # p = 0.02 in each of 8 cells: significant alone, not after Holm over the 8
    found = prr.c9(_c9({}, BETTER_LOSS), _depth({}, (3, -0.02, -0.03, -0.01, 0.02)))
    assert found.verdict == INCONCLUSIVE and found.primary.estimate == 0
    assert (found.arms["p_holm"] > RULES.alpha).all()
    assert prr.C9_PRIMARY == "last" and "last" not in prr.C9_RIVALS


def test_c9_without_depth_table_is_undefined():
    assert prr.c9(_c9({}, BETTER_LOSS)).verdict == INCONCLUSIVE


SAME_RANK = (0.0, 0.0, 0.0, NAN)  # identical rankings in every pair: no spread


def _c10(kind: dict, default, context_wins=False):
    rows = [_comp("tau", m, *kind.get(m, default), context="seeds") for m in prr.STABILITY_RIVALS]
    if context_wins:  # nested checkpoints and calibration subsets never count
        rows += [_comp("tau", m, 0.5, 0.4, 0.6, 0.001, context=c) for m in ("bi", "taylor")
                 for c in ("checkpoints", "calibration")]
    return pd.DataFrame(rows)


STABLER, LESS = (0.3, 0.2, 0.4, 0.001), (-0.3, -0.4, -0.2, 0.001)


@pytest.mark.parametrize("kind,default,wins,expected", [
    ({"last": SAME_RANK}, STABLER, False, HOLDS),  # better than every heuristic, matches the fixed-order ceiling
    ({"last": LESS}, STABLER, False, MIXED),  # less stable than last-k
    ({}, LESS, True, FAILS),
    ({}, (0.1, -0.2, 0.4, 0.5), False, INCONCLUSIVE),
    ({"bi": (0.3, NAN, NAN, NAN)}, STABLER, False, INCONCLUSIVE),
], ids=["holds", "mixed-ceiling", "fails-nested-do-not-count", "inconclusive", "undefined"])
def test_c10_rule(kind, default, wins, expected):
    found = _check(prr.c10(_c10(kind, default, wins)), expected)
    shown = (found.primary, *found.secondary)
    assert len(shown) == len(prr.STABILITY_RIVALS)  # the counted comparisons only
    assert [e.note for e in shown if e.note] == ["ceiling"]
    if kind.get("last") == SAME_RANK:
        assert found.primary.estimate == 0 and render.interval(found.primary) == "all 3 seed pairs: +0.00"


def _c11(shortfalls, next_token=(), choice=()):
    rows = [_comp("accuracy_vs_best", "taylor", *d, model="resnet B=9", family="resnet", stage="pruned", k=i + 1)
            for i, d in enumerate(shortfalls)]
    rows += [_comp("accuracy_vs_best", "bi", *d, stage="pruned", k=i + 1) for i, d in enumerate(next_token)]
    rows += [_comp("choice_accuracy_vs_best", "bi", *d, stage="healed", k=i + 1) for i, d in enumerate(choice)]
    rows.append(_comp("accuracy", "bi", -0.5, -0.6, -0.4, 0.001, model="resnet B=9", family="resnet",
                      stage="pruned", k=1))  # per-method rows: not the rule
    return pd.DataFrame(rows)


AT_PAR, EXACT, SHORT, UNSURE = (0.0, -0.005, 0.005, 0.9), (0.0, 0.0, 0.0, NAN), (-0.1, -0.12, -0.08, 0.001), \
    (0.0, -0.2, 0.2, 0.9)
NEAR = (-0.03, -0.035, -0.025, 0.01)  # 3 points short: inside the continuation task's margin, not the digits'


@pytest.mark.parametrize("shortfalls,next_token,choice,expected", [
    ([AT_PAR, EXACT], [SHORT], [AT_PAR], HOLDS),  # next-token accuracy is the training objective: not counted
    ([AT_PAR], [], [NEAR], HOLDS),  # the continuation task's own margin
    ([AT_PAR, SHORT], [], [], MIXED),
    ([NEAR], [], [], FAILS),  # 3 points short on digits: inferior at the 2-point margin
    ([SHORT, SHORT], [], [SHORT], FAILS),
    ([AT_PAR, UNSURE], [], [], INCONCLUSIVE),  # an undecided comparison is not "competitive"
    ([], [AT_PAR], [], INCONCLUSIVE),
], ids=["holds", "holds-choice-margin", "mixed", "fails-digits-margin", "fails", "inconclusive", "undefined"])
def test_c11_rule(shortfalls, next_token, choice, expected):
    d = _c11(shortfalls, next_token, choice)
    if not shortfalls and not choice:
        assert prr.c11(d).verdict == INCONCLUSIVE and prr.c11(d).primary is None
        return
    found = _check(prr.c11(d), expected)
    notes = [e.note for e in (found.primary, *found.secondary)]
    assert ("reported, not counted" in notes) == bool(next_token)
    first = "resnet" if shortfalls else "transformer"
    assert found.margin == 100 * prr.C11_TASKS[first][2] and found.primary.unit == "seeds"


# ---- the list and the renderer -----------------------------------------------------------------

def test_every_margin_is_printed_in_its_rule():
    by_key = {c.key: c.rule for c in CLAIMS}
    assert f"1 +- {RULES.exponent_margin:g}" in by_key["C2"] and f"{RULES.aic_threshold:g}" in by_key["C4"]
    assert f"+-{RULES.ppl_margin_pct:g} %" in by_key["C8"]
    assert f"{100 * RULES.acc_margin:g} accuracy points" in by_key["C11"]
    assert f"{100 * RULES.choice_margin:g} points (continuation choice)" in by_key["C11"]
    assert all("Holm" in by_key[k] for k in ("C5", "C6", "C7", "C8", "C9", "C10", "C11"))


def test_alpha_is_declared_once():
    assert RULES.alpha == stats.ALPHA
    names = [name for name, _, _ in RULES.rows()]
    assert names.count("alpha") == 1 and len(set(names)) == len(names)


def test_unrun_study_is_not_measured():
    found = {f.key: f for f in judge_all({}, rules=CLAIMS)}
    assert all(f.verdict == MISSING for k, f in found.items() if k != "C1")
    assert found["C1"].verdict == HOLDS and found["C1"].primary.estimate == found["C1"].primary.n > 0


def test_renderer_reads_the_finding():
    found = judge(BY_KEY["C2"], {"fanin_vs_gradients": {"summary": _fanin(
        "transformer", (0.9, 0.8, 1.0), PROP, FLAT)}}, profile="smoke")
    lines = render.takeaway(found).splitlines()
    assert len(lines) == 3 and lines[0].startswith("C2 predicted:") and lines[2].endswith(found.why)
    assert render.interval(found.primary) in lines[1] and "tokens/param" in lines[1]  # the regime, from the config
    assert found.regime.params_min <= found.regime.params_max and found.regime.tokens_per_param_max > 0
    row = render.summary_table([found]).iloc[0]
    assert row["verdict"] == "**mixed**" and row["n"] == "9 runs" and row["why"] == found.why
    frame = render.findings_frame([found]).iloc[0]
    assert frame["estimate"] == 0.9 and frame["ci_low"] == 0.8 and frame["verdict"] == "mixed"
