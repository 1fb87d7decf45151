"""Display names: what a reader sees for each arm, schedule, intervention and method.

Studies key their rows by code names (``post``, ``ln_scaling``, ``fanin``, ``bi``); every figure,
table and report line shows the words here instead, so a plot's legend and a table's column never
disagree. A code name without an entry is shown as it is.
"""
from __future__ import annotations

# norm placements and training settings of the mechanism study (experiments.mechanism.ARMS, SETTINGS)
ARMS = {"pre": "Pre-LN", "post": "Post-LN", "peri": "Peri-LN", "mix": "Mix-LN", "deepnorm": "DeepNorm",
        "ln_scaling": "LayerNorm Scaling", "embed_x8": "Pre-LN, embeddings x8",
        "pre_small_batch": "Pre-LN, smaller batch", "pre_high_lr": "Pre-LN, larger learning rate",
        "resnet_preact": "pre-activation ResNet", "resnet_post": "post-activation ResNet",
        "resnet": "pre-activation ResNet"}
# CascadeFormer width schedules (gfa_theory.methods.taper.SCHEDULES)
SCHEDULES = {"uniform": "uniform", "narrow": "narrow uniform", "fanin": "fan-in taper", "linear": "linear taper",
             "cosine": "cosine taper", "step": "step taper", "inverse": "inverse taper",
             "measured": "measured-A taper", "predicted": "predicted-A taper"}
# gain windows of the prediction study (experiments.prediction.WINDOWS)
WINDOWS = {"init": "initialization", "1%": "first 1 %", "5%": "first 5 %", "25%": "first 25 %",
           "training": "all of training", "final": "final model"}
# equalization interventions (train.intervention) and optimizers
INTERVENTIONS = {"none": "baseline", "equalize": "equalized gradients",
                 "global_rescale": "global rescale (effective-lr control)", "equalize_update": "equalized updates"}
OPTIMIZERS = {"adamw": "AdamW", "sgd": "SGD"}
# accounts of the mechanism study (experiments.mechanism.ACCOUNTS): matplotlib mathtext
ACCOUNTS = {"counts": "counts $F$", "aligned": "aligned $\\sum g$", "orthogonal": "orthogonal $\\sqrt{\\sum g^2}$",
            "product": "full product $\\prod(1+g)$"}
# pruning methods (experiments.pruning.METHODS)
METHODS = {"cascadeflow": "CascadeFlow (A)", "cascadeflow_rms": "CascadeFlow (RMS A)", "bi": "Block Influence",
           "angular": "angular distance (span)", "taylor": "Taylor", "magnitude": "weight magnitude",
           "random": "random (mean of draws)", "last": "last-k", "ablation": "greedy ablation (oracle)",
           "none": "unpruned"}


def arm(code: str) -> str:
    return ARMS.get(code, code)


def window(code: str) -> str:
    return WINDOWS.get(code, code)


def schedule(code: str) -> str:
    return SCHEDULES.get(code, code)


def method(code: str) -> str:
    return METHODS.get(code, code)


def intervention(code: str) -> str:
    return INTERVENTIONS.get(code, code)
