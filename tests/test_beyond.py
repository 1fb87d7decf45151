"""Rules of the mechanism study's hypotheses (experiments/verdicts/mechanism.py) on synthetic tables:
every verdict reachable; asserts read the finding's fields."""
import numpy as np
import pandas as pd
import pytest

from experiments.summary import keyed
from experiments.verdicts import HYPOTHESES, judge_all
from experiments.verdicts import mechanism as beyond
from experiments.verdicts.toolkit import FAILS, HOLDS, INCONCLUSIVE, MISSING, MIXED, THRESHOLDS
from gfa_theory.instrument import stats

UNDEFINED = INCONCLUSIVE  # an undefined statistic is inconclusive, with its why

RNG = np.random.default_rng(0)


def _errors(diffs: dict[tuple[str, int], list[float]], base: float = 0.2) -> pd.DataFrame:
    """Profile errors: per (arm, depth) one run per entry of ``diffs``; error(counts) = base + d,
    aligned = base (the best gain account), orthogonal and product far worse."""
    rows = []
    for (arm, B), ds in diffs.items():
        for seed, d in enumerate(ds):
            rid = f"{arm}-{B}-{seed}"
            for acc, err in (("counts", base + d), ("aligned", base), ("orthogonal", base + 1), ("product", base + 2)):
                rows.append({"run_id": rid, "seed": seed, "family": "transformer", "arm": arm, "depth_B": B,
                             "account": acc, "gains": "training", "log_error": err})
                rows.append({**rows[-1], "gains": "final", "log_error": 9.0})  # the secondary source is not read
    return pd.DataFrame(rows)


def _tight(d: float, n: int = 3) -> list[float]:
    return list(d + 0.001 * np.arange(n))


@pytest.mark.parametrize("diffs, verdict", [
    ({("pre", 4): _tight(0.0), ("pre", 8): _tight(-0.01)}, HOLDS),
    ({("pre", 4): _tight(-0.2, 10), ("pre", 8): _tight(0.2)}, MIXED),
    ({("pre", 4): _tight(0.5), ("pre", 8): _tight(0.4)}, FAILS),
    ({("pre", 4): [-0.5, 0.6, 0.1], ("pre", 8): [0.4, -0.3, 0.2]}, INCONCLUSIVE),
    ({("pre", 4): [0.0]}, UNDEFINED),
])
def test_h1_reaches_every_verdict(diffs, verdict):
    f = beyond.h1({"errors": _errors(diffs)})
    assert f.verdict == verdict, f.why
    assert "aligned" in f.primary.label and f.margin == THRESHOLDS.error_margin or verdict == UNDEFINED
    assert len(f.secondary) == len({B for _, B in diffs})  # one row per depth


def test_h1_and_h2_without_runs_are_not_measured():
    empty = _errors({("post", 8): _tight(0.0)})
    assert beyond.h1({"errors": empty}).verdict == MISSING
    assert beyond.h2({"errors": empty}).verdict == MISSING
    assert all(f.verdict == MISSING for f in judge_all({}, rules=HYPOTHESES))


def _h2(effects: dict[str, list[float]]) -> str:
    diffs = {("pre", 8): _tight(0.0), **{(a, 8): d for a, d in effects.items()}}
    return beyond.h2({"errors": _errors(diffs)}).verdict


def test_h2_reaches_every_verdict():
    arms = ("post", "peri", "ln_scaling", "deepnorm", "embed_x8")
    assert _h2({a: _tight(0.3) for a in arms}) == HOLDS
    assert _h2({a: _tight(0.3) if k < 2 else [-0.2, 0.3, 0.0] for k, a in enumerate(arms)}) == MIXED
    assert _h2({a: _tight(-0.3) if k == 0 else [-0.2, 0.3, 0.0] for k, a in enumerate(arms)}) == FAILS
    assert _h2({a: [-0.2, 0.3, 0.0] for a in arms}) == INCONCLUSIVE
    assert _h2({a: [0.3] for a in arms}) == UNDEFINED  # one seed: no interval


def _runs(x: np.ndarray, y: np.ndarray, xcol: str, ycol: str) -> dict:
    return {"runs": pd.DataFrame({"family": "transformer", "arm": "pre", xcol: x, ycol: y})}


@pytest.mark.parametrize("rule, xcol, ycol, sign", [
    (beyond.h3, "stream_growth", "excess_slope", +1),
    (beyond.h4, "mean_window_relative_rank", "exponent", -1),
])
def test_across_run_rules_reach_every_verdict(rule, xcol, ycol, sign):
    x = np.linspace(0, 1, 20)
    noise = RNG.permutation(np.linspace(-1, 1, 20))
    assert rule(_runs(x, sign * x + 0.05 * noise, xcol, ycol)).verdict == HOLDS
    assert rule(_runs(x, -sign * x + 0.05 * noise, xcol, ycol)).verdict == FAILS
    assert rule(_runs(x, noise, xcol, ycol)).verdict == INCONCLUSIVE
    # one far point drives the OLS slope; the ranks of the rest are noise: only one of the two tests
    xo, yo = np.append(x, 30.0), np.append(noise, sign * 30.0)
    assert rule(_runs(xo, yo, xcol, ycol)).verdict == MIXED
    assert rule(_runs(x, np.full(20, np.nan), xcol, ycol)).verdict == UNDEFINED
    assert rule(_runs(x[:3], x[:3], xcol, ycol)).verdict == MISSING


def _proxy_rows(proxy: str, ols: tuple, spearman: tuple) -> list[dict]:
    fam = f"transformer[{proxy}]"

    def mk(key, e, lo, hi, p):
        se = stats.se_from_interval(lo, hi, 6) if np.isfinite([lo, hi]).all() else np.nan
        return keyed({"test": "synthetic", "estimate": e, "se": se, "df": 5, "ci_low": lo, "ci_high": hi, "p": p,
                      "r2": np.nan, "n": 30, "n_groups": 6, "method": "synthetic"}, family=fam, **key) | {
            "proxy": proxy}
    abl = {"arm": "ablation"}
    out = [mk({**abl, "quantity": "ols_depth"}, *ols),
           mk({**abl, "quantity": "spearman", "subset": "no_first_block"}, *spearman),
           mk({**abl, "quantity": "spearman"}, 0.5, 0.2, 0.8, 0.01)]
    out += [mk({"quantity": q}, 0.3, 0.2, 0.4, np.nan)
            for q in ("first_share_ablation", "first_share_A", "first_dloss", "rest_dloss")]
    return out


POS, NEG, NULL, NAN = (0.5, 0.3, 0.7, 1e-4), (-0.5, -0.7, -0.3, 1e-4), (0.1, -0.3, 0.5, 0.5), (np.nan,) * 4


@pytest.mark.parametrize("per_proxy, verdict", [
    ({p: (POS, POS) for p in ("A", "G_norm", "A_signal", "U", "displacement")}, HOLDS),
    ({p: (NEG, NULL) for p in ("A", "G_norm", "A_signal", "U", "displacement")}, FAILS),
    ({"A": (POS, POS), "G_norm": (POS, NULL), "U": (NEG, NEG)}, MIXED),
    ({"A": (POS, POS), "G_norm": (NULL, NULL)}, INCONCLUSIVE),
    ({"A": (POS, NAN)}, UNDEFINED),
])
def test_h5_applies_c5s_rule_per_proxy(per_proxy, verdict):
    rows = [r for px, (o, s) in per_proxy.items() for r in _proxy_rows(px, o, s)]
    f = beyond.h5({"proxies": pd.DataFrame(rows)})
    assert f.verdict == verdict, f.why
    per = {px: beyond.proxy_finding(pd.DataFrame(rows), px).verdict for px in per_proxy}
    assert [e.note for e in (f.primary, *f.secondary) if e.note] == [v.value for v in per.values()]


def test_rules_are_declared_and_printed():
    assert THRESHOLDS.error_margin > 0 and f"{THRESHOLDS.error_margin:g}" in beyond.H1_RULE
    assert [h.key for h in HYPOTHESES] == ["H1", "H2", "H3", "H4", "H5", "H6", "H7"]
