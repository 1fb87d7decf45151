"""Every claim of the abstract (C1-C11), the mechanism and prediction studies' hypotheses (H1-H7), and the rule
that judges each: numbers in, a :class:`~experiments.verdicts.toolkit.Finding` out.

One room per concept: :mod:`.toolkit` (verdicts, findings, every threshold declared once, the
shared tests), the rules grouped by study (:mod:`.fanin` C1-C4, :mod:`.importance` C5,
:mod:`.equalization` C6, :mod:`.repetition` C7, :mod:`.cascadeformer` C8, :mod:`.pruning` C9-C11,
:mod:`.mechanism` H1-H5, :mod:`.prediction` H6-H7) and one renderer (:mod:`.render`: the report's table and details,
LaTeX, the README table and a study's console takeaway). Rules read the studies' summary rows by
their structured key (:func:`experiments.summary.pick`), never by a label. The studies compute
numbers only; what counts as "comparable", "better" or "proportional" is decided here.

This package sits above the study modules (it reads their declared constants) and below their
consumers: ``python -m experiments`` prints a study's takeaways from it, ``figures`` writes the
report from it.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from gfa_theory.models import build_model

from .. import cascadeformer as cf
from .. import pruning as pr
from ..plans import gpt_run, plan, resnet_run
from . import cascadeformer, equalization, fanin, importance, mechanism, prediction, pruning, repetition
from .toolkit import MISSING, THRESHOLDS, Finding, Regime, Verdict, missing, undefined

FANIN, IMPORTANCE, MECHANISM = "fanin_vs_gradients", "gradients_vs_importance", "mechanism"
PREDICTION = "prediction"


@dataclass(frozen=True)
class Rule:
    key: str
    short: str  # the claim in a few words (the report's table)
    statement: str  # the paper's words (abstract), or the hypothesis
    rule: str  # how the verdict is computed, in words, from the thresholds the code uses
    evidence: str  # figure / table
    studies: tuple[str, ...]
    family: str | None  # whose models the regime describes (None: no training)
    judge: Callable[[dict], Finding]  # {study: {table: frame}} -> finding


def _reads(study: str, table: str, rule: Callable[[pd.DataFrame], Finding], empty: str | None = None):
    """A claim's judge: ``rule`` on table ``table`` of ``study``; ``empty``: why, when that table
    has no rows (the verdict is then inconclusive)."""
    def judge(tables: dict) -> Finding:
        frame = tables[study].get(table)
        if empty is not None and (frame is None or frame.empty):
            return undefined(empty)
        return rule(frame)
    return judge


def _mechanism(h: Callable[[dict], Finding]):
    return lambda tables: h(tables[MECHANISM])


def _prediction(h: Callable[[dict], Finding]):
    return lambda tables: h(tables[PREDICTION])


CLAIMS: tuple[Rule, ...] = (
    Rule("C1", "Fan-in falls linearly with depth (quadratically under deep supervision)",
         "In Pre-LayerNorm residual stacks, the gradient at a layer is the sum of an identity path and all downstream "
         "functional paths, producing a gradient fan-in that decays linearly with depth (and quadratically under "
         "deep supervision).", fanin.C1_RULE, "F1", (), None, lambda _tables: fanin.c1()),
    Rule("C2", "A follows fan-in (Transformers)",
         "Accumulated training gradients follow the theoretical fan-in (Transformers).", fanin.C2_RULE, "F2, T5",
         (FANIN,), "transformer", _reads(FANIN, "summary", fanin.c2)),
    Rule("C3", "A follows fan-in (ResNets)", "Accumulated training gradients follow the theoretical fan-in (ResNets).",
         "as C2", "F3, T5", (FANIN,), "resnet", _reads(FANIN, "summary", fanin.c3)),
    Rule("C4", "Deep supervision: A decays quadratically",
         "Under deep supervision the fan-in, and the accumulated gradient, decay quadratically.", fanin.C4_RULE,
         "F4, T5", (FANIN,), "transformer", _reads(FANIN, "summary", fanin.c4)),
    Rule("C5", "A is associated with ablation importance",
         "Accumulated training gradients are associated with post hoc layer importance.", importance.C5_RULE,
         "F5, T5", (IMPORTANCE,), "transformer", _reads(IMPORTANCE, "summary", importance.c5)),
    Rule("C6", "Equalizing gradients does not restore late layers",
         "Equalizing per-layer gradient norms does not restore late-layer value.", equalization.C6_RULE, "F6",
         ("equalization",), "transformer", _reads("equalization", "summary", equalization.c6)),
    Rule("C7", "Shared repetition restores and elevates late layers",
         "Increasing downstream path counts via parameter-shared repetition restores and elevates late-layer value.",
         repetition.C7_RULE, "F7", ("repetition",), "transformer", _reads("repetition", "summary", repetition.c7)),
    Rule("C8", "CascadeFormer: comparable perplexity, faster",
         "CascadeFormer: width tapered with depth gives perplexity comparable to a uniform baseline at the same "
         "training budget while reducing latency by 8.6% and increasing throughput by 9.4%.", cascadeformer.C8_RULE,
         "T1, F8", (cf.NAME,), "transformer", _reads(cf.NAME, "summary", cascadeformer.c8)),
    Rule("C9", "CascadeFlow prunes better (perplexity)",
         "CascadeFlow Pruning (remove the blocks with the smallest accumulated training gradient) outperforms "
         "standard pruning heuristics on perplexity.", pruning.C9_RULE, "F12, T2, T6", (pr.NAME,), "transformer",
         pruning.judge_c9),
    Rule("C10", "CascadeFlow ranks more stably",
         "CascadeFlow Pruning outperforms standard heuristics on rank stability.", pruning.C10_RULE, "T4",
         (pr.NAME,), "transformer", _reads(pr.NAME, "comparisons", pruning.c10, pruning.NO_COMPARISONS)),
    Rule("C11", "CascadeFlow stays competitive on accuracy",
         "CascadeFlow Pruning stays competitive on downstream accuracy.", pruning.C11_RULE, "T3", (pr.NAME,),
         "transformer", _reads(pr.NAME, "comparisons", pruning.c11, pruning.NO_COMPARISONS)),
)

HYPOTHESES: tuple[Rule, ...] = (
    Rule("H1", "Counts fit the Pre-LN profile as well as gains",
         "Path counts predict the Pre-LN profile of A no worse than the best gain-weighted account",
         mechanism.H1_RULE, "F9, F10", (MECHANISM,), "transformer", _mechanism(mechanism.h1)),
    Rule("H2", "Gains beat counts where placement changes them",
         "Gain-weighted accounts beat counts where the norm placement changes the gains", mechanism.H2_RULE,
         "F9, F10", (MECHANISM,), "transformer", _mechanism(mechanism.h2)),
    Rule("H3", "Stream growth flattens A", "Stream growth flattens the profile of A beyond what counts predict",
         mechanism.H3_RULE, "F11", (MECHANISM,), "transformer", _mechanism(mechanism.h3)),
    Rule("H4", "Higher gradient rank, A follows F less",
         "The more directions the gradients spread over (rank), the less A follows F", mechanism.H4_RULE, "F11",
         (MECHANISM,), "transformer", _mechanism(mechanism.h4)),
    Rule("H5", "Every accumulation proxy tracks importance",
         "Every accumulation proxy (A, net gradient, A beyond noise, updates, displacement) tracks held-out ablation "
         "importance under claim C5's rule", mechanism.H5_RULE, "F11", (MECHANISM,), "transformer",
         _mechanism(mechanism.h5)),
    # the prediction study: trained in the scale and full profiles (not the default one, whose budget is
    # full); its findings carry their own regime (the default model size)
    Rule("H6", "Gains at initialization predict the trained profile",
         "Gains measured at initialization (and over the first 1 % / 5 % of training) predict the trained profile "
         "of A no worse than the training-averaged product", prediction.H6_RULE, "F14", (PREDICTION,), None,
         _prediction(prediction.h6)),
    Rule("H7", "With norm gains, Post-LN fits like Pre-LN",
         "With the norms' own gains in the account, Post-LN's profile error falls to the Pre-LN level",
         prediction.H7_RULE, "F14", (PREDICTION,), None, _prediction(prediction.h7)),
)

RULES: tuple[Rule, ...] = CLAIMS + HYPOTHESES
BY_KEY = {r.key: r for r in RULES}


def for_study(name: str) -> list[Rule]:
    """The rules that read study ``name``'s tables (what ``python -m experiments NAME`` judges)."""
    return [r for r in RULES if name in r.studies]


def _params(cfg) -> int:
    return sum(q.numel() for q in build_model(cfg.model_name, cfg.model).parameters())


@functools.lru_cache(maxsize=None)
def regime(profile: str, family: str) -> Regime:
    """The models a profile trains for ``family``: parameter range and training tokens per parameter."""
    p = plan(profile)
    if family == "resnet":
        params = [_params(resnet_run(p, blocks_per_stage=list(b), seed=p.seeds[0])) for b in p.resnet_depths]
        return Regime(family, min(params), max(params))
    params = [_params(gpt_run(p, n_blocks=B, seed=p.seeds[0])) for B in p.depths]
    tokens = p.train.steps * p.train.batch_size * p.model.block_size
    return Regime(family, min(params), max(params), tokens / max(params), tokens / min(params))


def judge(rule: Rule, tables: dict, profile: str | None = None) -> Finding:
    """``rule``'s finding from the studies' tables (not measured where a study has not been run),
    with its key, short claim and, given ``profile``, the regime it was measured in."""
    if any(tables.get(s) is None for s in rule.studies):
        found = missing(f"study {', '.join(rule.studies)} not run for this profile")
    else:
        found = rule.judge(tables)
    reg = found.regime  # a rule whose models are not the profile's standard ones fills its own
    if reg is None and profile and rule.family and found.verdict != MISSING:
        reg = regime(profile, rule.family)
    return dataclasses.replace(found, key=rule.key, claim=rule.short, regime=reg)


def judge_all(tables: dict, profile: str | None = None, rules: tuple[Rule, ...] = RULES) -> list[Finding]:
    """Every rule's finding, in order."""
    return [judge(r, tables, profile) for r in rules]


__all__ = ["CLAIMS", "HYPOTHESES", "RULES", "BY_KEY", "THRESHOLDS", "Finding", "Rule", "Verdict", "for_study",
           "judge", "judge_all", "regime"]
