"""Every claim rule (C2-C11) on small synthetic tables shaped like the studies' tables: each rule
reaches each of its verdicts (holds, mixed, does not hold, inconclusive), and no test accepts more
than one verdict."""
import math

import numpy as np
import pandas as pd
import pytest

from figures import claims
from figures.claims import FAILS, HOLDS, INCONCLUSIVE, MIXED, RULES

NAN = float("nan")


def _r(test, est, lo, hi, p=NAN, n=9):
    return {"test": test, "estimate": est, "ci_low": lo, "ci_high": hi, "p": p, "r2": NAN, "n": n * 6,
            "n_groups": n, "method": "synthetic"}


def _check(found, expected):
    verdict, text = found
    assert verdict.startswith(expected), (verdict, text)
    if expected == INCONCLUSIVE:
        assert verdict.startswith(INCONCLUSIVE)
    else:
        assert verdict == expected
    return text


# ---- C2 / C3 -----------------------------------------------------------------------------------

def _fanin(family, rho, e, e1):
    tag = f"{family}/final"
    return pd.DataFrame([_r(f"{tag}: per-run Spearman A vs linear F", *rho),
                         _r(f"{tag}: within-run exponent A ~ linear F", *e),
                         _r(f"{tag}: within-run exponent A ~ linear F, first block excluded", *e1),
                         _r(f"{tag}: within-run exponent A ~ linear F + depth", *e),
                         _r(f"{tag}: log-log slope A ~ linear F", *e)])


PROP, FLAT = (1.0, 0.97, 1.03), (0.3, 0.2, 0.4)


@pytest.mark.parametrize("rule,family", [(claims.c2, "transformer"), (claims.c3, "resnet")])
@pytest.mark.parametrize("rho,e,e1,expected", [
    ((0.9, 0.8, 1.0), PROP, PROP, HOLDS),  # order and shape
    ((0.9, 0.8, 1.0), PROP, FLAT, MIXED),  # proportional only with the first block: order only
    ((0.9, 0.8, 1.0), FLAT, FLAT, MIXED),  # the order follows, the magnitude does not
    ((0.1, -0.2, 0.4), PROP, PROP, FAILS),  # rho below 0.5 and not above 0
    ((0.4, -0.1, 0.9), PROP, PROP, INCONCLUSIVE),  # rho undecided
    ((0.9, NAN, NAN), PROP, PROP, INCONCLUSIVE),  # undefined
], ids=["holds", "mixed-first-block", "mixed-not-proportional", "fails", "inconclusive", "undefined"])
def test_follows_rule(rule, family, rho, e, e1, expected):
    text = _check(rule(_fanin(family, rho, e, e1)), expected)
    assert "exponent" in text and "without the first block" in text


def test_follows_reports_no_spread_as_such():
    text = claims.c2(_fanin("transformer", (1.0, 1.0, 1.0), PROP, PROP)).measured
    assert "all 9 runs: 1.000" in text and "[1.000, 1.000]" not in text


# ---- C4 ----------------------------------------------------------------------------------------

def _deep(family, aic, q, q1, lin, l1):
    tag = f"{family}/all"
    return [_r(f"{tag}: AIC(A proportional to quadratic F) - AIC(A proportional to linear F)", aic, NAN, NAN),
            _r(f"{tag}: within-run exponent A ~ quadratic F", *q),
            _r(f"{tag}: within-run exponent A ~ quadratic F, first block excluded", *q1),
            _r(f"{tag}: within-run exponent A ~ linear F", *lin),
            _r(f"{tag}: within-run exponent A ~ linear F, first block excluded", *l1)]


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
    text = _check(claims.c4(pd.DataFrame(rows)), expected)
    assert "AIC(quadratic) - AIC(linear)" in text
    if expected == FAILS:
        assert "decays like the linear count" in text


# ---- C5 ----------------------------------------------------------------------------------------

def _importance(slope_p, ex_p, sign=1.0):
    rows = []
    for fam in ("transformer", "resnet"):
        rows += [_r(f"{fam}: OLS ablation_norm ~ A_norm + depth", sign * 2.0, sign * 1.5, sign * 2.5, slope_p),
                 _r(f"{fam}: per-run spearman ablation vs A, first block excluded", sign * 0.5, -0.1, 0.9, ex_p),
                 _r(f"{fam}: per-run spearman ablation vs A", 0.7, 0.5, 0.9, 1e-4),
                 _r(f"{fam}: first block's share of ablation importance", 0.9, 0.85, 0.95),
                 _r(f"{fam}: first block's share of A", 0.5, 0.45, 0.55),
                 _r(f"{fam}: ablation delta-loss, first block (nats)", 1.4, 1.1, 1.6),
                 _r(f"{fam}: ablation delta-loss, mean later block (nats)", 0.02, 0.01, 0.03)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("slope_p,ex_p,sign,expected", [
    (1e-6, 1e-3, 1.0, HOLDS),
    (1e-6, 0.4, 1.0, MIXED),  # not without the first block
    (1e-6, 0.4, -1.0, FAILS),  # importance falls with A
    (0.4, 0.4, 1.0, INCONCLUSIVE),
], ids=["holds", "mixed", "fails", "inconclusive"])
def test_c5_rule(slope_p, ex_p, sign, expected):
    text = _check(claims.c5(_importance(slope_p, ex_p, sign)), expected)
    assert "nats" in text and "Holm" in text


def test_c5_is_holm_adjusted():
    # four p-values of 0.01: Holm's adjusted values are all 0.04, every test passes
    assert claims.c5(_importance(0.01, 0.01)).verdict == HOLDS
    # four of 0.02 would each pass unadjusted; adjusted (0.08) none does
    assert claims.c5(_importance(0.02, 0.02)).verdict == INCONCLUSIVE


# ---- C6 ----------------------------------------------------------------------------------------

# paired changes of the late-half delta-loss (control mean 0.2 nats: margin +-0.05 at 25 %)
NONE, RISE, WIDE = (0.0, -0.01, 0.01, 0.9), (0.1, 0.08, 0.12, 0.001), (0.0, -0.2, 0.2, 0.9)
EQUALIZED, NOT_EQUALIZED = 0.02, 0.3  # the arm's mean CV of U across blocks; the control's is 0.3


def _equalization(adamw, sgd, cv=(EQUALIZED, EQUALIZED)):
    rows = []
    for opt, d, cv_arm in (("adamw", adamw, cv[0]), ("sgd", sgd, cv[1])):
        arm, ctl = claims.eq.PRIMARY[opt]
        rows += [_r(f"{ctl}: late_dloss", 0.2, 0.15, 0.25, n=3),
                 _r(f"{arm} - {ctl}: late_dloss", *d, n=3),
                 _r(f"{arm}: cv_U", cv_arm, cv_arm * 0.9, cv_arm * 1.1, n=3),
                 _r(f"{ctl}: cv_U", 0.3, 0.25, 0.35, n=3)]
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
    text = _check(claims.c6(_equalization(adamw, sgd, cv)), expected)
    assert "TOST" in text and "power" in text and "manipulation check" in text
    if NOT_EQUALIZED in cv:
        assert "FAILED" in text


def test_c6_margin_is_relative_to_the_control_and_holm_adjusted():
    # the same change of 0.04 nats: inside +-25 % of a 0.2-nat control (0.05), outside for 0.1 (0.025)
    near = (0.04, 0.035, 0.045, 0.001)
    assert claims.c6(_equalization(near, near)).verdict == HOLDS
    small = _equalization(near, near)
    small.loc[small.test.str.endswith(": late_dloss") & ~small.test.str.contains(" - "), "estimate"] = 0.1
    assert claims.c6(small).verdict == FAILS
    # a control with no late delta-loss leaves no margin: undefined, never "holds"
    zero = _equalization(NONE, NONE)
    zero.loc[zero.test.str.endswith(": late_dloss") & ~zero.test.str.contains(" - "), "estimate"] = 0.0
    assert claims.c6(zero).verdict.startswith(INCONCLUSIVE)


def test_c6_margins_are_in_the_rule():
    rule = claims.C6_RULE
    assert f"+-{RULES.eq_late_margin_pct:g} %" in rule and f"{RULES.eq_cv_ratio:g} x" in rule
    assert f"+-{RULES.share_margin:g}" in rule and "TTestPower" in rule and "Holm" in rule


# ---- C7 ----------------------------------------------------------------------------------------

def _repetition(vs_base, vs_ctl, fan_in=(10, 3, 5), r=2):
    """A repetition summary for r: the primary comparisons, the arms' joint delta-loss, the
    last-group fan-in (repeat, baseline, control) and a secondary row."""
    from experiments import repetition as rep
    rows = [_r(rep.comparison(r, rep.BASELINE, rep.PRIMARY), *vs_base, n=3),
            _r(rep.comparison(r, "control", rep.PRIMARY), *vs_ctl, n=3),
            _r(rep.comparison(r, "control", "last_share"), 0.01, 0.005, 0.015, 0.01, n=3)]
    for a, f in zip((rep.repeat(r), rep.BASELINE, rep.control(r)), fan_in):
        rows += [_r(f"{a}: {rep.PRIMARY} m={r}", 0.2, 0.1, 0.3, n=3), _r(f"{a}: last_F (autograd paths)", f, f, f, n=3)]
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
    text = _check(claims.c7(_repetition(vs_base, vs_ctl, fan_in)), expected)
    if expected != INCONCLUSIVE or fan_in[0] == 5:
        assert "Holm p" in text and "TOST" in text and "Manipulation check" in text and "nats" in text


def test_c7_manipulation_failure_is_named():
    found = claims.c7(_repetition(UP, UP, (5, 3, 5)))
    assert "did not raise the last group's fan-in" in found.verdict


def test_c7_margin_and_primary_measure_are_in_the_rule():
    assert f"+-{RULES.rep_margin_nats:g} nats" in claims.C7_RULE
    assert "equal-applications joint ablation" in claims.C7_RULE and "compute-matched" in claims.C7_RULE


# ---- C8 ----------------------------------------------------------------------------------------

AA = {f"aa_{m}_ratio{q}": v for m in ("latency", "throughput") for q, v in (("", 1.0), ("_q25", 0.97), ("_q75", 1.03))}


def _arm(label, role, gap, gap_narrow, lat=1.0, thr=1.0, iqr=0.01, n=3, steps=300):
    """A summary row: ``gap`` / ``gap_narrow`` = (estimate, ci_low, ci_high) of the paired loss gap."""
    row = {"label": label, "schedule": label, "role": role, "steps": steps, "n_seeds": n, "val_loss": 2.2 + gap[0],
           "params_ratio": 0.66, "flops_ratio": 0.65, "tokens_per_param": 1.2, **AA}
    for suffix, (est, lo, hi) in (("", gap), ("_narrow", gap_narrow)):
        row |= {f"loss_gap{suffix}": est, f"loss_gap{suffix}_ci_low": lo, f"loss_gap{suffix}_ci_high": hi,
                f"loss_gap{suffix}_p": 0.5, f"loss_gap{suffix}_n": n}
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
    (_arm("fanin", "primary", (0.0, NAN, NAN), BETTER, *FAST), [], claims.UNDEFINED),
    # an exploratory arm that would "hold" does not rescue a primary with no speed: best-of-N is not a test
    (_arm("fanin", "primary", TIGHT, BETTER, *NOSPEED), [_arm("linear", "exploratory", TIGHT, BETTER, *FAST)], FAILS),
], ids=["holds", "mixed-narrow-as-good", "mixed-below-paper", "fails-no-speed", "fails-worse", "fails-narrow-better",
        "inconclusive-wide", "undefined", "exploratory-not-counted"])
def test_c8_rule(primary, extra, expected):
    text = _check(claims.c8(pd.DataFrame([UNIFORM, NARROW, primary, *extra])), expected)
    if expected == HOLDS:
        assert "primary fanin" in text and "power" in text and "A/A IQR" in text
    if extra:
        assert "exploratory (Holm over 1 arms): linear" in text


def test_c8_speed_must_clear_the_aa_band():
    # A/A IQR 0.97-1.03, margin 0.01: latency IQR must end <= 0.96, throughput IQR start >= 1.04
    r = pd.Series(_arm("fanin", "primary", TIGHT, BETTER, 0.94, 1.06, iqr=0.005))
    assert claims.beyond_aa(r, "latency") and claims.beyond_aa(r, "throughput")
    near = pd.Series(_arm("fanin", "primary", TIGHT, BETTER, 0.96, 1.04, iqr=0.005))  # beyond 1, not the band
    assert not claims.beyond_aa(near, "latency") and not claims.beyond_aa(near, "throughput")
    wide = r.copy()
    wide["aa_throughput_ratio_q75"] = 1.05  # a noisier A/A control swallows the same speedup
    assert not claims.beyond_aa(wide, "throughput")


def test_c8_token_sweep_is_reported_not_counted():
    long = [_arm(n, role, g, gn, *FAST, n=1, steps=1200) for n, role, g, gn in
            (("uniform", "reference", ZERO, ZERO), ("narrow", "control", ZERO, ZERO),
             ("fanin", "primary", WORSE, NARROW_BETTER))]
    verdict, text = claims.c8(pd.DataFrame([UNIFORM, NARROW, _arm("fanin", "primary", TIGHT, BETTER, *FAST), *long]))
    assert verdict == HOLDS and "token sweep at 1200 steps (1 seed(s)" in text


def test_c8_verdict_columns_live_in_claims():
    from experiments import cascadeformer as cf

    for name in ("is_comparable", "has_paper_speedup", "PPL_TOLERANCE_PCT", "paper_match", "beyond_aa"):
        assert not hasattr(cf, name)


# ---- C9-C11 (pruning comparisons) --------------------------------------------------------------

def _comp(quantity, method, est, lo, hi, p, model="transformer B=8", family="transformer", stage="", context="",
          k=NAN, n=3):
    return {"test": f"{model} {quantity} {method}", "model": model, "family": family, "depth_B": 8,
            "quantity": quantity, "stage": stage, "context": context, "k": k, "method": method,
            "estimate": est, "ci_low": lo, "ci_high": hi, "p": p, "n": n, "by_construction": method == "last"}


BETTER_LOSS, WORSE_LOSS, EVEN = (-0.1, -0.15, -0.05, 0.001), (0.05, 0.03, 0.07, 0.001), (0.0, -0.1, 0.1, 0.9)


def _c9(kind: dict, default=EVEN, undefined=False):
    rows = [_comp("loss", m, *kind.get(m, default), stage=stage)
            for stage in ("pruned", "healed") for m in (claims.C9_PRIMARY, *claims.C9_RIVALS, "random", "ablation")]
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
    text = _check(claims.c9(_c9({}, secondary, undefined), _depth(cells, primary)), expected)
    assert "random (floor)" in text and "ablation (oracle)" in text and "Kendall tau(CascadeFlow, depth order)" in text
    assert "resnet" not in text.split("Secondary")[0]  # C9 counts Transformers only


def test_c9_never_differing_cells_are_named_not_won():
    text = _check(claims.c9(_c9({}, BETTER_LOSS), _depth({1: NEVER, 2: ONE_RUN}, DIFF_BETTER)), MIXED)
    assert "never differs at k = 1: C9 cannot separate CascadeFlow from depth order there" in text
    assert "k = 1 no healing: differs in 0 of 3 runs (cannot separate" in text
    assert "k = 2 healed: differs in 1 of 3 runs, loss -0.0500 (one run, no spread: no test)" in text
    assert "Better than last-k in 4 of 8 (k, stage) cells" in text


def test_c9_primary_is_holm_adjusted_over_testable_cells():
    # p = 0.02 in each of 8 cells: significant alone, not after Holm over the 8
    found = claims.c9(_c9({}, BETTER_LOSS), _depth({}, (3, -0.02, -0.03, -0.01, 0.02)))
    assert found.verdict == INCONCLUSIVE
    assert "Better than last-k in 0 of 8" in found.measured
    assert claims.C9_PRIMARY == "last" and "last" not in claims.C9_RIVALS


def test_c9_without_depth_table_is_undefined():
    assert claims.c9(_c9({}, BETTER_LOSS)).verdict == claims.UNDEFINED


SAME = (0.0, 0.0, 0.0, NAN)  # identical rankings in every pair: no spread


def _c10(kind: dict, default, context_wins=False):
    rows = [_comp("tau", m, *kind.get(m, default), context="seeds") for m in claims.STABILITY_RIVALS]
    if context_wins:  # nested checkpoints and calibration subsets never count
        rows += [_comp("tau", m, 0.5, 0.4, 0.6, 0.001, context=c) for m in ("bi", "taylor")
                 for c in ("checkpoints", "calibration")]
    return pd.DataFrame(rows)


STABLER, LESS = (0.3, 0.2, 0.4, 0.001), (-0.3, -0.4, -0.2, 0.001)


@pytest.mark.parametrize("kind,default,wins,expected", [
    ({"last": SAME}, STABLER, False, HOLDS),  # better than every heuristic, matches the fixed-order ceiling
    ({"last": LESS}, STABLER, False, MIXED),  # less stable than last-k
    ({}, LESS, True, FAILS),
    ({}, (0.1, -0.2, 0.4, 0.5), False, INCONCLUSIVE),
    ({"bi": (0.3, NAN, NAN, NAN)}, STABLER, False, INCONCLUSIVE),
], ids=["holds", "mixed-ceiling", "fails-nested-do-not-count", "inconclusive", "undefined"])
def test_c10_rule(kind, default, wins, expected):
    text = _check(claims.c10(_c10(kind, default, wins)), expected)
    assert "ceiling" in text
    if kind.get("last") == SAME:
        assert "all 3 seed pairs: +0.00" in text and "[+0.00, +0.00]" not in text


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
    text = _check(claims.c11(_c11(shortfalls, next_token, choice)), expected)
    if next_token and shortfalls:
        assert "reported only" in text
    if choice:
        assert "continuation choice" in text


# ---- the list ----------------------------------------------------------------------------------

def test_every_margin_is_printed_in_its_rule():
    by_key = {c.key: c.rule for c in claims.CLAIMS}
    assert f"1 +- {RULES.exponent_margin:g}" in by_key["C2"] and f"{RULES.aic_threshold:g}" in by_key["C4"]
    assert f"+-{RULES.ppl_margin_pct:g} %" in by_key["C8"]
    assert f"{100 * RULES.acc_margin:g} accuracy points" in by_key["C11"]
    assert f"{100 * RULES.choice_margin:g} points (continuation choice)" in by_key["C11"]
    assert all("Holm" in by_key[k] for k in ("C5", "C6", "C7", "C8", "C9", "C10", "C11"))


def test_unrun_study_is_not_measured():
    found = claims.evaluate_claims({}).set_index("claim")
    assert (found.drop(index="C1")["verdict"] == claims.MISSING).all()
    assert found.loc["C1", "verdict"] == HOLDS
    assert np.isfinite(RULES.alpha)
