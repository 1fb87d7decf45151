"""Framework callbacks (gfa_theory.integrations): pre-clip accumulated gradients per unit, one
record per optimizer step, equal to a hand-written loop's; logged to TensorBoard; gradients.csv
in the format of a ``gfa train`` run."""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from gfa_theory.errors import ConfigError
from gfa_theory.instrument.tracking import GradientTracker
from gfa_theory.integrations import hf as gfa_hf
from gfa_theory.integrations import lightning as gfa_lightning
from gfa_theory.models.families import get_units
from gfa_theory.train.store import GRADIENTS_FILE, read_gradients

pytestmark = pytest.mark.usefixtures("one_thread")

V, T, LR, CLIP, ACCUM, STEPS, MICRO = 50, 8, 1e-2, 1.0, 2, 4, 2
BLOCKS = ["transformer.h.0", "transformer.h.1", "transformer.h.2"]
BRANCHES = [f"{b}.{f}" for b in BLOCKS for f in ("attn", "mlp")]
COLUMNS = ["run_id", "seed", "unit", "kind", "index", "quantity", "step", "value", "fan_in"]


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=V, n_positions=16, bos_token_id=V - 1,
                     eos_token_id=V - 1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = STEPS * ACCUM * MICRO) -> None:
        self.x = torch.randint(0, V, (n, T), generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, k: int) -> dict:
        # Position 0 is never a target of a causal LM: marked ignored, every count of the
        # targets (the Trainer counts labels[..., 1:] or labels, by loss type) is the same.
        labels = self.x[k].clone()
        labels[0] = -100
        return {"input_ids": self.x[k], "labels": labels}


class RecordingCollator:
    """Stacks examples and keeps every micro-batch the Trainer asked for, in order."""

    def __init__(self) -> None:
        self.batches: list[dict] = []

    def __call__(self, features: list[dict]) -> dict:
        batch = {k: torch.stack([f[k] for f in features]) for k in features[0]}
        self.batches.append({k: v.clone() for k, v in batch.items()})
        return batch


def unit_norms(model) -> dict[tuple[str, str], float]:
    """||g_unit|| of the current .grad, in float64, by (kind, name)."""
    out = {}
    for kind in ("block", "branch"):
        for u in get_units(model, kind):
            sq = sum(p.grad.double().square().sum() for p in u.params if p.grad is not None)
            out[(kind, u.name)] = float(sq.sqrt())
    return out


def manual_loop(model, batches: list[dict], clip: float) -> tuple[dict, dict, list[float]]:
    """The Trainer's update by hand: ACCUM micro-batches, loss/ACCUM each, clip, AdamW.
    Returns A from the pre-clip and from the post-clip gradient, and each step's total norm."""
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    pre: dict = {}
    post: dict = {}
    totals = []
    for s in range(0, len(batches), ACCUM):
        for b in batches[s:s + ACCUM]:
            (model(**b).loss / ACCUM).backward()
        for key, v in unit_norms(model).items():
            pre[key] = pre.get(key, 0.0) + v
        if clip > 0:
            totals.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        for key, v in unit_norms(model).items():
            post[key] = post.get(key, 0.0) + v
        opt.step()
        opt.zero_grad(set_to_none=True)
    return pre, post, totals


def totals_by_unit(frame: pd.DataFrame) -> dict[tuple[str, str], float]:
    rows = frame[(frame["quantity"] == "A") & frame["step"].isna()]
    return {(k, u): float(v) for k, u, v in zip(rows["kind"], rows["unit"], rows["value"])}


def assert_close(got: dict, want: dict, rtol: float = 1e-6) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=rtol), key


def scalar_tags(logdir) -> set[str]:
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


# ---- transformers.Trainer ---------------------------------------------------------------------

class NaivePreOptimizerStep(TrainerCallback):
    """What a callback reading .grad at on_pre_optimizer_step records: the clipped gradient."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.tracker = GradientTracker(model, kind="both")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.tracker.step()


def hf_train(out, source: str = "hooks", max_grad_norm: float = CLIP, report_to=("tensorboard",)):
    model = tiny_gpt2()
    start = copy.deepcopy(model)
    collator = RecordingCollator()
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=MICRO, gradient_accumulation_steps=ACCUM,
        max_steps=STEPS, learning_rate=LR, lr_scheduler_type="constant", weight_decay=0.0,
        max_grad_norm=max_grad_norm, logging_steps=1, save_strategy="no", report_to=list(report_to),
        use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    naive = NaivePreOptimizerStep()
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(), data_collator=collator,
                      callbacks=[naive])
    cb = gfa_hf.GradientFanInCallback(source=source).attach(trainer)
    trainer.train()
    return SimpleNamespace(cb=cb, naive=naive, start=start, batches=collator.batches, out=out)


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    run = hf_train(tmp_path_factory.mktemp("hf"))
    run.pre, run.post, run.totals = manual_loop(run.start, run.batches, CLIP)
    return run


def test_hf_callback_records_pre_clip_accumulated_gradient(hf_run):
    assert len(hf_run.batches) == STEPS * ACCUM
    assert hf_run.cb.recording.tracker.steps == STEPS  # one record per optimizer step
    assert max(hf_run.totals) > CLIP  # the Trainer's default clipping did act
    assert_close(totals_by_unit(hf_run.cb.frame()), hf_run.pre)


def test_hf_naive_on_pre_optimizer_step_records_clipped_gradient(hf_run):
    naive = totals_by_unit(hf_run.naive.tracker.to_frame())
    assert_close(naive, hf_run.post)  # what the Trainer clipped, not what the loss delivered
    for key, want in hf_run.pre.items():
        assert naive[key] < 0.9 * want, key


def test_hf_tensorboard_has_per_unit_scalars(hf_run):
    (logdir,) = {p.parent for p in (hf_run.out / "runs").rglob("events.out.tfevents.*")}
    tags = scalar_tags(logdir)  # the Trainer's TensorBoard callback prefixes "train/"
    assert {f"train/gfa/A/block/{b}" for b in BLOCKS} <= tags
    assert {f"train/gfa/grad_norm/branch/{b}" for b in BRANCHES} <= tags
    assert "train/loss" in tags


def test_hf_gradients_csv_reads_back(hf_run):
    df = read_gradients(hf_run.out)
    assert list(df.columns) == COLUMNS
    assert df["run_id"].unique().tolist() == [hf_run.out.name] and df["seed"].unique().tolist() == [0]
    assert sorted(df.loc[df["kind"] == "block", "unit"].unique()) == BLOCKS
    assert sorted(df.loc[df["kind"] == "branch", "unit"].unique()) == sorted(BRANCHES)
    assert set(df["quantity"]) == {"A", "A_sq", "A_rms", "numel", "grad_norm"}
    blocks = df[(df["kind"] == "block") & (df["quantity"] == "A")].sort_values("index")
    assert blocks["fan_in"].tolist() == [11, 7, 3]  # N = 6 branches: (6+5), (4+3), (2+1)
    assert_close(totals_by_unit(df), hf_run.pre)
    assert sorted(df.loc[df["quantity"] == "grad_norm", "step"].unique()) == list(range(1, STEPS + 1))


def test_hf_step_source_reads_unclipped_grad(tmp_path):
    run = hf_train(tmp_path, source="step", max_grad_norm=0.0, report_to=())
    pre, _, _ = manual_loop(run.start, run.batches, clip=0.0)
    assert_close(totals_by_unit(run.cb.frame()), pre)


def test_hf_refuses_what_it_would_record_wrong():
    cb = gfa_hf.GradientFanInCallback(source="step")
    with pytest.raises(ConfigError, match="max_grad_norm=0"):
        cb._check(SimpleNamespace(max_grad_norm=1.0, world_size=1))
    with pytest.raises(ConfigError, match="local gradient"):
        gfa_hf.GradientFanInCallback()._check(SimpleNamespace(max_grad_norm=1.0, world_size=2))
    with pytest.raises(ConfigError, match="DeepSpeed"):
        cb._check(SimpleNamespace(max_grad_norm=0.0, world_size=1, deepspeed="ds.json"))
    with pytest.raises(ConfigError, match="source"):
        gfa_hf.GradientFanInCallback(source="grad")


def test_hf_fp16_loss_scale_divided_and_skipped_steps_dropped():
    model = tiny_gpt2()
    cb = gfa_hf.GradientFanInCallback()
    args, state = SimpleNamespace(max_grad_norm=1.0, world_size=1), SimpleNamespace(max_steps=2)
    with pytest.warns(UserWarning, match="attach"):  # not attached: report_to would miss the values
        cb.on_train_begin(args, state, None, model=model)
    x = torch.randint(0, V, (2, T))
    (model(input_ids=x, labels=x).loss * 8.0).backward()  # a loss scale of 8
    want = {k: v / 8.0 for k, v in unit_norms(model).items()}
    scaler = SimpleNamespace(is_enabled=lambda: True, get_scale=lambda: 8.0)
    cb.on_pre_optimizer_step(args, state, None, optimizer=SimpleNamespace(scaler=scaler))
    cb.on_optimizer_step(args, state, None, optimizer=SimpleNamespace(step_was_skipped=False))
    cb.on_pre_optimizer_step(args, state, None, optimizer=SimpleNamespace(scaler=scaler))
    cb.on_optimizer_step(args, state, None, optimizer=SimpleNamespace(step_was_skipped=True))
    assert cb.recording.tracker.steps == 1
    assert_close(totals_by_unit(cb.frame()), want, rtol=1e-5)
    cb.recording.close()


# ---- Lightning ------------------------------------------------------------------------------------

class Wrapped(pl.LightningModule):
    """A LightningModule holding the GPT-2: the callback finds the registry model inside."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=0.0)


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lightning")
    model = tiny_gpt2()
    start = copy.deepcopy(model)
    loader = torch.utils.data.DataLoader(Tokens(), batch_size=MICRO, shuffle=False)
    cb = gfa_lightning.GradientFanInCallback()
    trainer = pl.Trainer(max_steps=STEPS, accumulate_grad_batches=ACCUM, gradient_clip_val=CLIP,
                         accelerator="cpu", devices=1, logger=TensorBoardLogger(str(root), name="tb"),
                         log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[cb])
    trainer.fit(Wrapped(model), loader)
    pre, post, totals = manual_loop(start, list(loader), CLIP)
    return SimpleNamespace(cb=cb, log_dir=trainer.log_dir, pre=pre, post=post, totals=totals)


def test_lightning_callback_records_pre_clip_accumulated_gradient(lightning_run):
    assert lightning_run.cb.recording.tracker.steps == STEPS
    assert max(lightning_run.totals) > CLIP
    got = totals_by_unit(lightning_run.cb.frame())
    assert_close(got, lightning_run.pre)
    for key, clipped in lightning_run.post.items():  # a post-clip read would have differed
        assert clipped < 0.9 * got[key], key


def test_lightning_logs_per_unit_scalars_to_tensorboard(lightning_run):
    tags = scalar_tags(lightning_run.log_dir)
    assert {f"gfa/A/block/{b}" for b in BLOCKS} <= tags
    assert {f"gfa/grad_norm/branch/{b}" for b in BRANCHES} <= tags


def test_lightning_gradients_csv_reads_back(lightning_run):
    df = read_gradients(lightning_run.log_dir)
    assert list(df.columns) == COLUMNS
    assert sorted(df.loc[df["kind"] == "block", "unit"].unique()) == BLOCKS
    assert_close(totals_by_unit(df), lightning_run.pre)
    assert (Path(lightning_run.log_dir) / GRADIENTS_FILE).is_file()


def test_unsupported_model_is_one_line():
    with pytest.raises(ConfigError, match="no model the gfa registry supports"):
        gfa_lightning.GradientFanInCallback().on_train_start(
            SimpleNamespace(strategy=None, optimizers=[None], max_steps=1, precision_plugin=None),
            torch.nn.Linear(2, 2))
