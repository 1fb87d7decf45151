"""Study sizes per profile. Studies share these so that identical runs are trained once.

``smoke`` finishes in seconds (tests only: the numbers mean nothing), ``default`` gives a
meaningful answer on 2 CPU cores in minutes, ``full`` is sized for one GPU: it trains and times on
``device="auto"`` (CUDA when present, else the CPU); the others on the CPU.
"""
from __future__ import annotations

SIZES: dict[str, dict] = {
    "smoke": dict(
        n_embd=16, n_head=2, d_ff=32, block_size=16, steps=8, batch_size=4, lr=3e-3, sgd_lr=0.1,
        eval_interval=0, checkpoint_interval=0, eval_batches=1, series_points=4, warmup_steps=2,
        depths=[2, 3], seeds=[0, 1],
        widths=[4, 8, 16], resnet_steps=6, resnet_batch=16, resnet_depths=[[1, 1], [2, 2]],
        importance_batches=1, importance_batch_size=4,
        equalize_depth=3, repetition_base=2, repeats=[2], controls=[1]),
    "default": dict(
        n_embd=64, n_head=4, d_ff=256, block_size=64, steps=400, batch_size=16, lr=3e-3, sgd_lr=0.3,
        eval_interval=100, checkpoint_interval=100, eval_batches=4, series_points=40, warmup_steps=20,
        depths=[4, 8, 12], seeds=[0, 1, 2],
        widths=[16, 32, 64], resnet_steps=300, resnet_batch=64,
        resnet_depths=[[1, 1, 1], [2, 2, 2], [3, 3, 3]],
        importance_batches=8, importance_batch_size=32,
        equalize_depth=8, repetition_base=4, repeats=[2, 3], controls=[1, 2]),
    "full": dict(
        n_embd=256, n_head=8, d_ff=1024, block_size=128, steps=5000, batch_size=64, lr=1e-3, sgd_lr=0.3,
        eval_interval=500, checkpoint_interval=500, eval_batches=20, series_points=100, warmup_steps=200,
        depths=[6, 12, 24], seeds=[0, 1, 2, 3, 4],
        widths=[32, 64, 128], resnet_steps=3000, resnet_batch=128,
        resnet_depths=[[2, 2, 2], [4, 4, 4], [6, 6, 6]],
        importance_batches=32, importance_batch_size=64,
        equalize_depth=12, repetition_base=8, repeats=[2, 3], controls=[1, 2], device="auto"),
}


def sizes(profile: str) -> dict:
    return SIZES[profile]


# CascadeFormer study (experiments/cascadeformer.py): tapered vs uniform models of one depth at the
# same training budget. Each schedule is a dict of gfa_theory.methods.taper.TaperConfig fields; the
# residual width, heads and FFN of the uniform model are the profile's n_embd / n_head / d_ff.
# cascade_timing holds gfa_theory.methods.taper_timing.TimingConfig fields (the context is block_size).
_CASCADE: dict[str, dict] = {
    "smoke": dict(
        cascade_depth=3, cascade_steps=8, cascade_quantum=8, cascade_eval_batches=1, cascade_eval_batch_size=4,
        cascade_schedules=[{"schedule": "uniform"}, {"schedule": "linear", "r": 0.5},
                           {"schedule": "fanin", "r": 0.5}, {"schedule": "cosine", "r": 0.5},
                           {"schedule": "step", "r": 0.5}],
        cascade_timing=dict(batch=4, repeats=3, warmup=1, latency_calls=1, throughput_calls=1, threads=1)),
    "default": dict(
        cascade_depth=8, cascade_steps=300, cascade_quantum=32, cascade_eval_batches=16,
        cascade_eval_batch_size=32,
        cascade_schedules=[{"schedule": "uniform"},
                           {"schedule": "linear", "r": 0.75}, {"schedule": "linear", "r": 0.5},
                           {"schedule": "linear", "r": 0.25},
                           {"schedule": "fanin", "r": 0.75}, {"schedule": "fanin", "r": 0.5},
                           {"schedule": "fanin", "r": 0.25},
                           {"schedule": "cosine", "r": 0.5}, {"schedule": "step", "r": 0.5}],
        cascade_timing=dict(batch=64, repeats=25, warmup=5, latency_calls=10, throughput_calls=2, threads=1)),
    "full": dict(
        cascade_depth=12, cascade_steps=5000, cascade_quantum=64, cascade_eval_batches=64,
        cascade_eval_batch_size=64,
        cascade_schedules=[{"schedule": "uniform"}]
        + [{"schedule": s, "r": r} for s in ("linear", "fanin", "cosine") for r in (0.75, 0.5, 0.25)]
        + [{"schedule": "step", "r": 0.5}, {"schedule": "step", "r": 0.25}],
        cascade_timing=dict(batch=64, repeats=50, warmup=10, latency_calls=10, throughput_calls=2, threads=4,
                            device="auto")),
}
for _profile, _keys in _CASCADE.items():
    SIZES[_profile].update(_keys)

# Pruning study (experiments/pruning.py): reuses study 1's single-head runs at these depths (they
# must be among `depths` / `resnet_depths`). Calibration batches come from the training split
# (batch size of the run), held-out batches from the validation split (ResNet: 0 = all of it);
# healing is prune_heal_steps AdamW steps at prune_heal_lr.
_PRUNE: dict[str, dict] = {
    "smoke": dict(
        prune_depths=[3], prune_resnet_depths=[[2, 2]], prune_calib_batches=1, prune_calib_subsets=2,
        prune_random_draws=2, prune_heal_steps=2, prune_heal_lr=3e-4, prune_eval_batches=1,
        prune_eval_batch_size=4, prune_resnet_eval_batches=1),
    "default": dict(
        prune_depths=[8], prune_resnet_depths=[[3, 3, 3]], prune_calib_batches=4, prune_calib_subsets=3,
        prune_random_draws=3, prune_heal_steps=20, prune_heal_lr=3e-4, prune_eval_batches=8,
        prune_eval_batch_size=16, prune_resnet_eval_batches=0),
    "full": dict(
        prune_depths=[12, 24], prune_resnet_depths=[[4, 4, 4]], prune_calib_batches=16, prune_calib_subsets=5,
        prune_random_draws=10, prune_heal_steps=200, prune_heal_lr=1e-4, prune_eval_batches=32,
        prune_eval_batch_size=64, prune_resnet_eval_batches=0),
}
for _profile, _keys in _PRUNE.items():
    SIZES[_profile].update(_keys)
