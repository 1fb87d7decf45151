"""The prediction study (beyond the paper, H6-H7): its smoke run end to end, the rules on synthetic
tables that make each verdict come out each way, and the default profile left as it was."""
import hashlib
import importlib

import numpy as np
import pandas as pd
import pytest

from experiments import STUDIES
from experiments import cascadeformer as cf
from experiments import prediction as pr
from experiments.plans import STUDY_ONLY, plan
from experiments.runner import Context
from experiments.study_io import load_study
from experiments.verdicts import BY_KEY, judge
from experiments.verdicts import prediction as vp
from experiments.verdicts.toolkit import FAILS, HOLDS, INCONCLUSIVE, MISSING, MIXED, THRESHOLDS
from gfa_theory.errors import ConfigError
from gfa_theory.methods import taper
from gfa_theory.methods.taper import PredictConfig
from gfa_theory.train.loop import HELDOUT_GAINS_FILE
from gfa_theory.train.run_config import run_key

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def smoke(smoke_root):
    ctx = Context("smoke", smoke_root, jobs=1, progress=False)
    df = pr.run(ctx=ctx)
    return ctx, df, load_study(ctx, pr.NAME)


def test_smoke_study_end_to_end(smoke):
    ctx, df, t = smoke
    p = plan("smoke")
    assert {"errors", "summary", "units", "runs", "profiles", "design"} <= set(t)
    e = t["errors"]
    arms = [*pr.ARMS, pr.RESNET_ARM]
    assert list(dict.fromkeys(e["arm"])) == arms and set(e["window"]) == set(pr.WINDOWS)
    assert set(e["seed"]) == set(p.seeds) and np.isfinite(e["log_error"]).all() and (e["log_error"] >= 0).all()
    # per run and window: counts once, every gain account with and without norm gains
    per = e.groupby(["run_id", "window"]).size()
    assert (per == 1 + 2 * 3).all() and len(per) == len(arms) * len(p.seeds) * len(pr.WINDOWS)
    assert set(e.loc[e.account == "counts", "norms"]) == {"without_norms"}
    # counts need no gains: the same error in every window; the gain accounts move with the window
    c = e[e.account == "counts"].groupby("run_id")["log_error"].nunique()
    assert (c == 1).all()
    # every run sampled its held-out gains at the declared steps (the early windows and every gain_every)
    for run_id in e["run_id"].unique():
        g = pd.read_csv(ctx.root / run_id / HELDOUT_GAINS_FILE)
        steps = 8 if run_id.startswith("gpt") else p.resnet.steps
        assert sorted(g["step"].unique()) == list(pr.gain_steps(steps, p.train.gain_every))
        assert {"jacobian_gain", "head_norm_gain"} & set(g["quantity"])
    post = pd.read_csv(ctx.root / e.loc[e.arm == "post", "run_id"].iat[0] / HELDOUT_GAINS_FILE)
    assert "post_norm_gain" in set(post["quantity"]) and "post_norm_gain" not in set(
        pd.read_csv(ctx.root / e.loc[e.arm == "pre", "run_id"].iat[0] / HELDOUT_GAINS_FILE)["quantity"])
    # summary: one keyed row per (arm, window, account, norms), each the mean of the per-run errors
    s = t["summary"]
    row = s[(s.arm == "post") & (s.setting == "init") & (s.quantity == "product") & (s.subset == "with_norms")]
    want = e[(e.arm == "post") & (e.window == "init") & (e.account == "product") & (e.norms == "with_norms")]
    assert len(row) == 1 and row["estimate"].iat[0] == pytest.approx(want["log_error"].mean())
    assert set(t["profiles"]["prediction"]) == {"early", "training"} and set(t["profiles"]["arm"]) == set(arms)
    # design: the predicted arm's widths from the profile predicted before training; primary and
    # narrow are the cascadeformer study's own configs (cache hits of its runs)
    d = t["design"]
    assert sorted(d["label"].unique()) == sorted([pr.PREDICTED, *pr.DESIGN_AGAINST]) and len(d) == 3 * len(p.seeds)
    ours = {run_key(c) for dd, c in pr.design_configs(p) if dd["label"] != pr.PREDICTED}
    assert ours <= {run_key(c) for _, c in cf.configs("smoke")}
    seed = p.seeds[0]
    _, uniform = cf._run(p, cf.arm_plan(p, cf.REFERENCE), seed, p.cascade.steps)
    tp = cf.arm_plan(p, cf.MEASURED, taper.predicted_profile(uniform.model, PredictConfig(seed=seed)))
    got = d[(d.label == pr.PREDICTED) & (d.seed == seed)]
    assert got["n_head"].iat[0] == ",".join(map(str, tp.n_head)) and got["d_ff"].iat[0] == ",".join(map(str, tp.d_ff))
    gap = s[(s.setting == "design") & (s.against == cf.PRIMARY)]
    by = d.set_index(["label", "seed"])["val_loss"]
    assert gap["estimate"].iat[0] == pytest.approx(np.mean([by[(pr.PREDICTED, k)] - by[(cf.PRIMARY, k)]
                                                             for k in p.seeds]))
    assert [e.label for e in vp.design(t)] == [f"predicted - {a}: held-out loss (exploratory)"
                                               for a in pr.DESIGN_AGAINST]
    # the findings are judged from these tables with their own regime (no StudyPlan of the scale profile)
    for key in ("H6", "H7"):
        f = judge(BY_KEY[key], {pr.NAME: t}, "scale")
        assert f.verdict != MISSING and f.regime is not None and f.regime.params_min > 0


# ---- the rules on synthetic tables ----------------------------------------------------------------

def _tables(init_shift: dict, post_shift: float = 0.0, noise=(0.0, 0.002, -0.002)) -> dict:
    """Per-run errors: every arm's training-averaged product error 0.3; its init (and 1 %, 5 %)
    error ``0.3 + init_shift[arm]``; Post-LN's errors ``post_shift`` above Pre-LN's."""
    rows = []
    for arm in [*pr.ARMS, pr.RESNET_ARM]:
        for seed, eps in enumerate(noise[::-1] if arm == "post" else noise):  # post: its own seeds' noise
            base = 0.3 + (post_shift if arm == "post" else 0.0)
            for window in pr.WINDOWS:
                shift = init_shift.get(arm, 0.0) if window in ("init", "1%", "5%") else 0.0
                for norms, extra in (("with_norms", 0.0), ("without_norms", 1.0)):
                    rows.append({"run_id": f"{arm}-{seed}", "seed": seed, "arm": arm,
                                 "family": "resnet" if arm == pr.RESNET_ARM else "transformer",
                                 "window": window, "account": "product", "norms": norms,
                                 "log_error": base + shift + extra * (arm == "post") + eps * (1 + (window == "init"))})
    runs = pd.DataFrame([{"family": "transformer", "arm": a, "params": 200_000 + 10 * (a == "peri"),
                          "tokens_per_param": 2.0} for a in pr.ARMS]
                        + [{"family": "resnet", "arm": pr.RESNET_ARM, "params": 50_000, "tokens_per_param": np.nan}])
    return {"errors": pd.DataFrame(rows), "runs": runs}


ARMS = [*pr.ARMS, pr.RESNET_ARM]


@pytest.mark.parametrize("shifts, verdict", [
    ({}, HOLDS),
    ({a: 0.5 for a in ARMS}, FAILS),
    ({a: 0.5 for a in ARMS[:3]}, MIXED),
], ids=["init-as-good", "init-worse-everywhere", "init-worse-on-some"])
def test_h6_verdicts(shifts, verdict):
    f = vp.h6(_tables(shifts))
    assert f.verdict == verdict, f.why
    assert f.margin == THRESHOLDS.prediction_margin and (f.regime.params_min, f.regime.params_max) == (50_000, 200_010)
    assert len(f.secondary) == len(ARMS) and set(f.arms["window"]) == {"init", "1%", "5%"}
    assert f.primary.estimate == pytest.approx(np.mean([shifts.get(a, 0.0) for a in ARMS]), abs=1e-9)


def test_h6_is_inconclusive_when_the_seeds_disagree():
    f = vp.h6(_tables({}, noise=(0.0, 0.2, -0.2)))
    assert f.verdict == INCONCLUSIVE


@pytest.mark.parametrize("shift, verdict", [(0.0, HOLDS), (0.6, FAILS), (0.05, INCONCLUSIVE)],
                         ids=["post-at-pre-level", "post-far-worse", "at-the-margin"])
def test_h7_verdicts(shift, verdict):
    f = vp.h7(_tables({}, post_shift=shift))
    assert f.verdict == verdict, f.why
    assert f.regime.params_min == f.regime.params_max == 200_000  # Post-LN and Pre-LN only
    assert f.primary.estimate == pytest.approx(shift, abs=1e-9)
    # without norm gains Post-LN is 1.0 worse still: reported beside the primary, not judged
    assert f.secondary[0].estimate == pytest.approx(shift + 1.0, abs=1e-9)


def test_h6_h7_not_measured_without_the_study():
    for key in ("H6", "H7"):
        f = judge(BY_KEY[key], {}, "default")
        assert f.verdict == MISSING and "not run" in f.why and f.regime is None


# ---- the default profile is left as it was ---------------------------------------------------------

# sha256 of the sorted run keys of every default-profile study's configs (unchanged by this study)
DEFAULT_RUN_KEYS = "2207002987a79cdf6e26908ac7a7d2a3fc0105a73353248c6fec54c222622b87"


def test_default_profile_configs_and_studies_are_unchanged():
    from figures import build
    keys = sorted({run_key(c) for name in STUDIES
                   for _, c in importlib.import_module(f"experiments.{name}").configs("default")})
    assert hashlib.sha256("\n".join(keys).encode()).hexdigest() == DEFAULT_RUN_KEYS
    assert pr.NAME not in STUDIES and STUDY_ONLY == {"scale": ("scale", pr.NAME)}
    default = build.selected(None, "default")
    assert "F14" not in default and "F13" not in default
    needed = {s for k in default for s in build.ALL[k].studies}
    assert needed == set(STUDIES)  # the default profile runs exactly the studies it ran before
    assert build.selected(None, "scale") == ["F13", "F14"] and "F14" in build.selected(None, "smoke")
    with pytest.raises(ConfigError, match="budget is full"):
        pr.study_plan("default")
    # the scale profile trains this study at the default profile's size
    assert pr.study_plan("scale") is plan("default")
    cfgs = pr.configs("scale")
    assert len(cfgs) == (len(pr.ARMS) + 1) * len(plan("default").seeds)
    assert all(c.train.heldout_gain_steps[0] == 0 and c.train.steps in (400, 300) for _, c in cfgs)
