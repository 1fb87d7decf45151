# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 3: does equalizing what each block learns restore late layers?
#
# Teaches from [`experiments/equalization.py`](../experiments/equalization.py) (its docstring
# explains every arm and the rival it rules out); the full-size result is claim C6 of
# [`paper/REPORT.md`](../paper/REPORT.md) and figure F6.
#
# **The prediction (the paper's).** If late blocks mattered little only because their gradients
# are *small*, giving every block the same step would restore them. The paper predicts it does
# not: the bottleneck is structural (few gradient paths), not a magnitude a rescaling can fix.
# So under equalization the late half's ablation loss (`late_dloss`, nats) should stay where the
# matched control puts it.
#
# **The arms.** SGD: no intervention, per-block gradient equalization, and its control
# `global_rescale` (one common factor that lowers the step exactly as equalizing does, so the
# difference isolates the per-block balance). AdamW: no intervention, per-block *update*
# equalization (`equalize_update`), and gradient equalization as a placebo (Adam divides out a
# gradient's scale, so it should change nothing).

# %% [markdown]
# ## Your guess first
#
# 1. Under AdamW, does equalizing each block's *update* raise the late half's ablation loss
#    compared with no intervention?
# 2. Does the placebo (equalizing gradients under AdamW) change the per-block update sizes at all?
# 3. Under SGD, is `equalize - global_rescale` on `late_dloss` positive, negative or zero?

# %%
import lesson

tables = lesson.run("equalization")  # 14 eight-block runs: a few minutes on 2 cores

# %% [markdown]
# ## The figure
#
# Per arm: each block's ablation loss, its share of the run's importance, and the update norm
# `U` per block (the manipulation check: an arm that did not flatten `U` did not equalize).

# %%
lesson.figure("F6", tables)

# %% [markdown]
# ## The numbers behind the figure
#
# First the manipulation check (`cv_U`: spread of the per-block update norms, 0 = equal), then
# the primary outcome (`late_dloss`), each as a paired difference over seeds:

# %%
s = tables["equalization"]["summary"]
keep = s["test"].str.contains(r" - .*: (?:cv_U|late_dloss|val_loss)$") | s["test"].str.endswith("tuned lr")
s[keep][["test", "estimate", "ci_low", "ci_high", "n"]].round(4)

# %%
lesson.verdicts(tables, "C6")

# %% [markdown]
# ## Reading it
#
# READING
