"""Study plans: how large every study is under each profile, as typed, frozen dataclasses.

``plan(profile)`` is the one entry point; a study reads attributes of the :class:`StudyPlan` it
returns (``p.model.n_embd``, ``p.cascade.timing.repeats``, ``p.prune.heal_steps``). Studies share
one plan so that identical runs are trained once (the 8-block baseline of the fan-in study is the
equalization study's baseline and a pruning study subject).

* ``smoke`` finishes in seconds (tests only: the numbers mean nothing);
* ``lesson`` teaches: each study's effect at a size a class runs on a laptop CPU in a few minutes
  (two seeds, one depth; the notebooks in ``lessons/`` run it and say what a short run
  can and cannot show);
* ``default`` gives a meaningful answer on 2 CPU cores in minutes;
* ``full`` is sized for one GPU: it trains and times on ``device="auto"`` (CUDA when present,
  else the CPU); the others on the CPU.
* ``scale`` has no StudyPlan: it runs only the scale study, whose ladders are its own plan
  (:data:`experiments.scale.SCALE_PLANS`, also for ``smoke`` and ``full``), and the prediction
  study, which trains at the ``default`` plan's size (:data:`experiments.prediction.SIZES`);
  :func:`plan` refuses it.

:func:`gpt_run` and :func:`resnet_run` turn a plan into the :class:`RunConfig` of one run. Their
configs, hence the runs' hashes and cached result directories, must stay byte-identical when this
module is edited: a change retrains every study.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from gfa_theory.errors import ConfigError
from gfa_theory.methods.taper import TaperConfig
from gfa_theory.train.run_config import RunConfig

PROFILES = ("smoke", "lesson", "default", "full", "scale")
# profiles that have no StudyPlan, and the only studies they run: ``scale`` runs the scale study
# (its own plan: :func:`experiments.scale.scale_plan`) and the prediction study (at the default
# plan's size: the default profile's budget has no room for it), so no other study is sized for it
STUDY_ONLY: dict[str, tuple[str, ...]] = {"scale": ("scale", "prediction")}


# ---- what is trained -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSize:
    """The character-level Transformer of every study: residual width, heads, FFN, context."""

    n_embd: int
    n_head: int
    d_ff: int
    block_size: int


@dataclass(frozen=True)
class TrainSize:
    """The Transformers' training budget (AdamW; ``sgd_lr`` for the SGD arm of study 3) and
    logging. ``eval_interval``, ``checkpoint_interval``, ``series_points`` and ``device`` apply to
    the ResNets too."""

    steps: int
    batch_size: int
    lr: float
    sgd_lr: float
    eval_interval: int
    checkpoint_interval: int
    eval_batches: int
    series_points: int
    warmup_steps: int
    gain_every: int | None  # branch gains sampled every so many steps (train.gain_every); None: not sampled
    device: str = "cpu"
    corpus: str | None = None  # data.corpus of the Transformers (None: the default corpus, config unchanged)


@dataclass(frozen=True)
class ResNetSize:
    """Pre-activation ResNets on digits: stage widths, SGD steps and batch."""

    widths: tuple[int, ...]
    steps: int
    batch_size: int


# ---- what each study does with the runs -------------------------------------------------------

@dataclass(frozen=True)
class ImportancePlan:
    """Held-out batches that post hoc importance is scored on (studies 2-4)."""

    batches: int
    batch_size: int


@dataclass(frozen=True)
class EqualizationPlan:
    """Study 3: Transformers of ``depth`` blocks. Each SGD arm's learning rate is tuned over
    ``sgd_lrs`` on seed ``tune_seed`` (then confirmed on the plan's other seeds); the no-clip
    variants run on ``noclip_seeds``. AdamW trains at the plan's ``train.lr``."""

    depth: int
    sgd_lrs: tuple[float, ...]
    tune_seed: int
    noclip_seeds: tuple[int, ...]


@dataclass(frozen=True)
class RepetitionPlan:
    """Study 4: ``base`` unique blocks; the last one applied ``r`` times for each of ``repeats``;
    unshared controls with ``base + c`` blocks for each of ``controls``."""

    base: int
    repeats: tuple[int, ...]
    controls: tuple[int, ...]


@dataclass(frozen=True)
class TaperSpec:
    """One schedule of study 5: the :class:`~gfa_theory.methods.taper.TaperConfig` fields that
    choose the widths (the rest comes from the plan). Defaults are TaperConfig's."""

    schedule: str
    r: float = TaperConfig.r
    alpha: float = TaperConfig.alpha
    step_at: float = TaperConfig.step_at
    supervision: str = TaperConfig.supervision

    def fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class TimingPlan:
    """Study 5's speed measurement: :class:`~gfa_theory.methods.taper_timing.TimingConfig` fields
    except the context (the model's ``block_size``). ``device=None`` keeps TimingConfig's (CPU)."""

    batch: int
    repeats: int
    warmup: int
    latency_calls: int
    throughput_calls: int
    threads: int
    device: str | None = None
    train_batch: int | None = None  # training-step throughput batch (None: TimingConfig's)
    train_calls: int | None = None

    def fields(self) -> dict[str, Any]:
        """The set fields, as TimingConfig keywords (and as recorded in the study's meta.json)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class CascadePlan:
    """Study 5 (CascadeFormer) at one depth (``depth`` blocks), FFN sizes rounded to multiples of
    ``quantum``, scored on ``eval_batches`` held-out batches of ``eval_batch_size``.

    ``primary``: the one fan-in-derived schedule declared before any result; its size fixes the
    ``budget`` ("params" or "flops") every other arm is matched to with ``taper.match``: the
    ``narrow`` uniform control and each of ``exploratory`` (schedule names; ``measured`` is the
    data-driven arm, derived from the full uniform run of the same seed). Every arm trains
    ``steps``; the token sweep retrains the full uniform, narrow uniform and primary for
    ``sweep_factor`` x ``steps`` on ``sweep_seeds`` (0: no sweep)."""

    depth: int
    steps: int
    quantum: int
    eval_batches: int
    eval_batch_size: int
    primary: TaperSpec
    budget: str
    exploratory: tuple[str, ...]
    sweep_factor: int
    sweep_seeds: tuple[int, ...]
    timing: TimingPlan


@dataclass(frozen=True)
class PrunePlan:
    """Study 6 (pruning) reuses study 1's single-head runs at ``depths`` / ``resnet_depths`` (they
    must be among the plan's). Calibration: ``calib_subsets`` subsets of ``calib_batches`` training
    batches; ``random`` averages ``random_draws`` draws; healing is ``heal_steps`` AdamW steps at
    ``heal_lr``; held-out: ``eval_batches`` of ``eval_batch_size`` (ResNet ``resnet_eval_batches``,
    0 = the whole validation split). Field order is the order of the study's meta.json."""

    depths: tuple[int, ...]
    resnet_depths: tuple[tuple[int, ...], ...]
    calib_batches: int
    calib_subsets: int
    random_draws: int
    heal_steps: int
    heal_lr: float
    eval_batches: int
    eval_batch_size: int
    resnet_eval_batches: int

    def meta(self) -> dict[str, Any]:
        """``prune_<field>: value`` for the study's meta.json."""
        return {f"prune_{f.name}": getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class StudyPlan:
    """Everything a profile fixes. ``depths`` (Transformer blocks), ``resnet_depths`` (blocks per
    stage) and ``seeds`` are the grid of study 1, which studies 2 and 6 reuse."""

    profile: str
    model: ModelSize
    train: TrainSize
    resnet: ResNetSize
    depths: tuple[int, ...]
    resnet_depths: tuple[tuple[int, ...], ...]
    seeds: tuple[int, ...]
    importance: ImportancePlan
    equalization: EqualizationPlan
    repetition: RepetitionPlan
    cascade: CascadePlan
    prune: PrunePlan


# ---- the profiles -------------------------------------------------------------------------

_PLANS: dict[str, StudyPlan] = {
    "smoke": StudyPlan(
        profile="smoke",
        model=ModelSize(n_embd=16, n_head=2, d_ff=32, block_size=16),
        train=TrainSize(steps=8, batch_size=4, lr=3e-3, sgd_lr=0.1, eval_interval=0, checkpoint_interval=0,
                        eval_batches=1, series_points=4, warmup_steps=2, gain_every=4),
        resnet=ResNetSize(widths=(4, 8, 16), steps=6, batch_size=16),
        depths=(2, 3), resnet_depths=((1, 1), (2, 2)), seeds=(0, 1),
        importance=ImportancePlan(batches=1, batch_size=4),
        equalization=EqualizationPlan(depth=3, sgd_lrs=(0.1, 0.3), tune_seed=0, noclip_seeds=(0,)),
        repetition=RepetitionPlan(base=2, repeats=(2,), controls=(1,)),
        cascade=CascadePlan(
            depth=3, steps=8, quantum=8, eval_batches=1, eval_batch_size=4, primary=TaperSpec("fanin", 0.5),
            budget="params", exploratory=("linear", "inverse", "measured"), sweep_factor=2, sweep_seeds=(0,),
            timing=TimingPlan(batch=4, repeats=3, warmup=1, latency_calls=1, throughput_calls=1, threads=1,
                              train_batch=2, train_calls=1)),
        prune=PrunePlan(depths=(3,), resnet_depths=((2, 2),), calib_batches=1, calib_subsets=2, random_draws=2,
                        heal_steps=2, heal_lr=3e-4, eval_batches=1, eval_batch_size=4, resnet_eval_batches=1)),
    "lesson": StudyPlan(
        profile="lesson",
        model=ModelSize(n_embd=32, n_head=2, d_ff=128, block_size=32),
        train=TrainSize(steps=200, batch_size=16, lr=3e-3, sgd_lr=0.3, eval_interval=0, checkpoint_interval=0,
                        eval_batches=4, series_points=10, warmup_steps=20, gain_every=50),
        resnet=ResNetSize(widths=(8, 16, 32), steps=150, batch_size=32),
        depths=(8,), resnet_depths=((2, 2, 2),), seeds=(0, 1),
        importance=ImportancePlan(batches=4, batch_size=32),
        equalization=EqualizationPlan(depth=8, sgd_lrs=(0.3,), tune_seed=0, noclip_seeds=(0,)),
        repetition=RepetitionPlan(base=4, repeats=(2,), controls=(1,)),
        cascade=CascadePlan(
            depth=8, steps=200, quantum=16, eval_batches=4, eval_batch_size=32, primary=TaperSpec("fanin", 0.5),
            budget="params", exploratory=(), sweep_factor=1, sweep_seeds=(),
            timing=TimingPlan(batch=16, repeats=5, warmup=1, latency_calls=3, throughput_calls=1, threads=1,
                              train_batch=8, train_calls=1)),
        prune=PrunePlan(depths=(8,), resnet_depths=((2, 2, 2),), calib_batches=2, calib_subsets=2, random_draws=2,
                        heal_steps=10, heal_lr=3e-4, eval_batches=4, eval_batch_size=16, resnet_eval_batches=4)),
    "default": StudyPlan(
        profile="default",
        model=ModelSize(n_embd=64, n_head=4, d_ff=256, block_size=64),
        train=TrainSize(steps=400, batch_size=16, lr=3e-3, sgd_lr=0.3, eval_interval=100, checkpoint_interval=100,
                        eval_batches=4, series_points=40, warmup_steps=20, gain_every=100),
        resnet=ResNetSize(widths=(16, 32, 64), steps=300, batch_size=64),
        depths=(4, 8, 12), resnet_depths=((1, 1, 1), (2, 2, 2), (3, 3, 3)), seeds=(0, 1, 2),
        importance=ImportancePlan(batches=8, batch_size=32),
        equalization=EqualizationPlan(depth=8, sgd_lrs=(0.1, 0.3, 1.0), tune_seed=0, noclip_seeds=(0, 1, 2)),
        repetition=RepetitionPlan(base=4, repeats=(2, 3), controls=(1, 2)),
        cascade=CascadePlan(
            depth=8, steps=300, quantum=32, eval_batches=16, eval_batch_size=32, primary=TaperSpec("fanin", 0.5),
            budget="params", exploratory=("inverse", "measured"), sweep_factor=3, sweep_seeds=(0,),
            timing=TimingPlan(batch=64, repeats=25, warmup=5, latency_calls=10, throughput_calls=2, threads=1,
                              train_batch=16, train_calls=1)),
        prune=PrunePlan(depths=(8,), resnet_depths=((3, 3, 3),), calib_batches=4, calib_subsets=3, random_draws=3,
                        heal_steps=20, heal_lr=3e-4, eval_batches=8, eval_batch_size=16, resnet_eval_batches=0)),
    "full": StudyPlan(
        profile="full",
        model=ModelSize(n_embd=256, n_head=8, d_ff=1024, block_size=128),
        train=TrainSize(steps=5000, batch_size=64, lr=1e-3, sgd_lr=0.3, eval_interval=500, checkpoint_interval=500,
                        eval_batches=20, series_points=100, warmup_steps=200, gain_every=250,
                        device="auto"),
        resnet=ResNetSize(widths=(32, 64, 128), steps=3000, batch_size=128),
        depths=(6, 12, 24), resnet_depths=((2, 2, 2), (4, 4, 4), (6, 6, 6)), seeds=(0, 1, 2, 3, 4),
        importance=ImportancePlan(batches=32, batch_size=64),
        equalization=EqualizationPlan(depth=12, sgd_lrs=(0.1, 0.3, 1.0), tune_seed=0,
                                      noclip_seeds=(0, 1, 2, 3, 4)),
        repetition=RepetitionPlan(base=8, repeats=(2, 3), controls=(1, 2)),
        cascade=CascadePlan(
            depth=12, steps=5000, quantum=64, eval_batches=64, eval_batch_size=64, primary=TaperSpec("fanin", 0.5),
            budget="params", exploratory=("linear", "cosine", "step", "inverse", "measured"), sweep_factor=4,
            sweep_seeds=(0, 1, 2, 3, 4),
            timing=TimingPlan(batch=64, repeats=50, warmup=10, latency_calls=10, throughput_calls=2, threads=4,
                              device="auto")),
        prune=PrunePlan(depths=(12, 24), resnet_depths=((4, 4, 4),), calib_batches=16, calib_subsets=5,
                        random_draws=10, heal_steps=200, heal_lr=1e-4, eval_batches=32, eval_batch_size=64,
                        resnet_eval_batches=0)),
}


def caveat(profile: str) -> str | None:
    """The line the console prints after a run of ``profile`` whose numbers must not be read as results."""
    if profile == "smoke":
        return ("profile smoke: a pipeline check (tiny models, a few steps): its numbers mean nothing, "
                "even where they point the expected way. For an effect you can read: --profile lesson "
                "(minutes; the notebooks in lessons/), or default (the report's).")
    return None


def plan(profile: str) -> StudyPlan:
    """The plan of ``profile`` (one of :data:`PROFILES`)."""
    if profile in STUDY_ONLY:
        only = STUDY_ONLY[profile]
        raise ConfigError(f"profile '{profile}' has only the {' and '.join(only)} studies: "
                          + "; ".join(f"python -m experiments {s} --profile {profile}" for s in only))
    if profile not in _PLANS:
        raise ConfigError(f"unknown profile '{profile}' (choices: {', '.join(PROFILES)})")
    return _PLANS[profile]


# ---- one run of a plan --------------------------------------------------------------------------

def gpt_run(p: StudyPlan, *, n_blocks: int, seed: int, supervision: Any = "final", optimizer: str = "adamw",
            lr: float | None = None, intervention: str = "none", block_schedule: list[int] | None = None,
            **model_kw) -> RunConfig:
    """A Transformer run of plan ``p`` (its model size and training budget; to train on another
    budget, pass ``dataclasses.replace(p, train=...)``). ``model_kw``: more GPT config fields."""
    m, t = p.model, p.train
    model = {"n_embd": m.n_embd, "n_head": m.n_head, "d_ff": m.d_ff, "block_size": m.block_size,
             "n_blocks": n_blocks, "supervision": supervision, "block_schedule": block_schedule, **model_kw}
    train_kw = {"steps": t.steps, "batch_size": t.batch_size, "optimizer": optimizer,
                "lr": lr if lr is not None else (t.lr if optimizer == "adamw" else t.sgd_lr),
                "seed": seed, "intervention": intervention, "eval_interval": t.eval_interval,
                "checkpoint_interval": t.checkpoint_interval, "eval_batches": t.eval_batches,
                "warmup_steps": t.warmup_steps, "series_points": t.series_points, "device": t.device,
                # every recording the studies read (they leave training bit-identical): the opt-in totals
                # (G_norm, noise_floor, U, displacement) and sampled branch gains, so that one run serves
                # the fan-in, equalization, mechanism and pruning studies alike
                "accumulate": True, "track_updates": True, "gain_every": t.gain_every}
    if optimizer == "sgd":
        train_kw["weight_decay"] = 0.0
    run = {"model_name": "gpt", "model": model, "train": train_kw}
    if t.corpus is not None:  # only then: a plan on the default corpus keeps its configs (and run hashes)
        run["data"] = {"corpus": t.corpus}
    return RunConfig.from_dict(run)


def resnet_run(p: StudyPlan, *, blocks_per_stage: list[int], seed: int, supervision: Any = "final",
               variant: str = "preact") -> RunConfig:
    """A pre-activation ResNet run of plan ``p`` (one stage width per entry of ``blocks_per_stage``)."""
    t = p.train
    model = {"blocks_per_stage": list(blocks_per_stage), "widths": list(p.resnet.widths[:len(blocks_per_stage)]),
             "supervision": supervision, "variant": variant}
    train_kw = {"steps": p.resnet.steps, "batch_size": p.resnet.batch_size, "seed": seed,
                "eval_interval": t.eval_interval, "checkpoint_interval": t.checkpoint_interval,
                "series_points": t.series_points, "device": t.device}
    return RunConfig.from_dict({"model_name": "resnet", "model": model, "train": train_kw})
