"""Every output of ``python -m figures``, in one static list: figures F1-F12, tables T1-T6 and B1, each
with its title, the studies it reads and the function that builds it from their tables (a
matplotlib Figure for a figure, a DataFrame for a table). :data:`ALONG_SCALE` holds F13, the scale
study's figure, and :data:`PREDICTION` F14, the prediction study's, each drawn only for the
profiles that run its study (:data:`DRAWN_FOR`).

Outputs go under the checkout (``figures/`` and ``paper/`` are never installed), so paths are
taken from :data:`REPO`, not from the working directory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from experiments import cascadeformer as cf
from experiments import prediction
from experiments import pruning as pr
from experiments import scale as scale_study

from . import efficiency, gfa
from . import scale as scale_figures
from . import mechanism as mech_figures
from . import prediction as prediction_figures

REPO = Path(__file__).resolve().parent.parent  # the checkout
GENERATED = REPO / "figures" / "generated"  # the default profile's outputs, committed (the README shows them)


@dataclass(frozen=True)
class Output:
    key: str
    kind: str  # "figure" | "table"
    title: str
    studies: tuple[str, ...]
    build: Callable[[dict], object] = field(repr=False)


FANIN, IMPORTANCE = "fanin_vs_gradients", "gradients_vs_importance"
MECHANISM = "mechanism"

OUTPUTS: dict[str, Output] = {o.key: o for o in (
    Output("F1", "figure", "Fan-in vs depth: symbolic closed forms and autograd counts", (), gfa.f1),
    Output("F2", "figure", "Transformer: accumulated gradient per block vs fan-in", (FANIN,), gfa.f2),
    Output("F3", "figure", "ResNet: accumulated gradient per block vs fan-in", (FANIN,), gfa.f3),
    Output("F4", "figure", "Deep supervision: accumulated gradient vs quadratic fan-in", (FANIN,), gfa.f4),
    Output("F5", "figure", "Accumulated gradient vs post hoc (ablation) importance", (IMPORTANCE,), gfa.f5),
    Output("F6", "figure", "Equalization: per-block delta-loss, share and update norms per arm", ("equalization",),
           gfa.f6),
    Output("F7", "figure", "Parameter-shared repetition: per-application importance, group fan-in and "
           "equal-applications ablation", ("repetition",), gfa.f7),
    Output("F8", "figure", "CascadeFormer vs uniform: perplexity, latency and throughput at one parameter budget",
           (cf.NAME,), efficiency.f8),
    Output("F12", "figure", "CascadeFlow Pruning: perplexity vs blocks removed, without and with healing",
           (pr.NAME,), efficiency.f12),
    Output("T1", "table", "CascadeFormer vs uniform Transformer (same depth and training budget)", (cf.NAME,),
           efficiency.t1),
    Output("T2", "table", "Pruning: held-out perplexity (ResNet: loss) at each k, every method, without and with "
                          "healing", (pr.NAME,), efficiency.t2),
    Output("T3", "table", "Pruning: downstream accuracy (ResNet top-1, Transformer next-token)", (pr.NAME,),
           efficiency.t3),
    Output("T4", "table", "Pruning: rank stability (Kendall tau, mean [min, max] over compared pairs, and mean "
                          "top-k overlap) across seeds, calibration subsets and checkpoints; scoring cost",
           (pr.NAME,), efficiency.t4),
    Output("T5", "table", "Regression statistics (fan-in vs A; A vs importance)", (FANIN, IMPORTANCE), gfa.t5),
    Output("T6", "table", "CascadeFlow vs depth order: Kendall tau with last-k, runs whose removed blocks differ, "
                          "and the held-out loss difference on exactly those runs", (pr.NAME,), efficiency.t6),
    # beyond the paper: the mechanism study (experiments/mechanism.py, experiments/verdicts/mechanism.py)
    Output("F9", "figure", "Beyond the paper: profile of A vs each account's prediction, per arm", (MECHANISM,),
           mech_figures.f9),
    Output("F10", "figure", "Beyond the paper: log-profile error per account and arm (t-intervals over seeds)",
           (MECHANISM,), mech_figures.f10),
    Output("F11", "figure", "Beyond the paper: stream growth, branch gains and gradient rank vs agreement with counts",
           (MECHANISM,), mech_figures.f11),
    Output("B1", "table", "Beyond the paper: pre-declared hypotheses H1-H5, rules and verdicts", (MECHANISM,),
           mech_figures.b1),
)}


# outputs of the scale study: drawn only for the profiles that run it (experiments.scale.FIGURE_PROFILES)
ALONG_SCALE: dict[str, Output] = {o.key: o for o in (
    Output("F13", "figure", "Along scale: each statistic vs tokens per parameter and vs parameters "
           "(t-intervals over seeds)", ("scale",), scale_figures.f13),
)}
# outputs of the prediction study: drawn only for the profiles that run it
# (experiments.prediction.FIGURE_PROFILES; not the default profile, whose budget is full)
PREDICTION: dict[str, Output] = {o.key: o for o in (
    Output("F14", "figure", "Beyond the paper: the profile of A predicted before training, per norm placement, "
           "and the error against how early the gains were measured (t-intervals over seeds)", (prediction.NAME,),
           prediction_figures.f14),
)}
# the profiles each of those outputs is drawn for (every other output: the profiles with a StudyPlan)
DRAWN_FOR: dict[str, tuple[str, ...]] = {**{k: scale_study.FIGURE_PROFILES for k in ALONG_SCALE},
                                         **{k: prediction.FIGURE_PROFILES for k in PREDICTION}}


def figures() -> list[Output]:
    """The figures, in order (the report and the README embed them): F12, split off F8, sits beside it;
    F13 (along scale) and F14 (prediction) last, where their profiles drew them."""
    return [o for o in (*OUTPUTS.values(), *ALONG_SCALE.values(), *PREDICTION.values()) if o.kind == "figure"]
