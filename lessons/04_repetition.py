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
# # Lesson 4: parameter-shared repetition
#
# Teaches from [`experiments/repetition.py`](../experiments/repetition.py); the full-size result
# is claim C7 of [`paper/REPORT.md`](../paper/REPORT.md) and figure F7.
#
# **The theory.** Applying the last block `r` times (the same parameters, `r` applications)
# sends the gradient of every application into one parameter group: its fan-in is the sum over
# its applications, so the shared late block collects far more gradient paths than a single late
# block does (figure F1, right panel).
#
# **The prediction (the paper's).** More paths into the late group should restore and raise its
# value: the repeated block should matter more than the last block of a plain model, and more
# than the extra block of a control that spends the same compute on one more *unshared* block.

# %% [markdown]
# ## Your guess first
#
# Four-block Transformers: the baseline; the last block applied twice (`repeat x2`); and a
# five-block control (`control +1`: the same number of block applications, one more set of
# parameters).
#
# 1. Is the last group's share of `A` larger in `repeat x2` than in the baseline?
# 2. Is its share of ablation importance larger too?
# 3. Which model reaches the lower validation loss: `repeat x2` or `control +1`?

# %%
import lesson

tables = lesson.run("repetition")

# %% [markdown]
# ## The figure

# %%
lesson.figure("F7", tables)

# %% [markdown]
# ## The numbers behind the figure
#
# Per variant, the last parameter group's share of fan-in, of `A` and of ablation importance,
# and the validation loss (mean over seeds):

# %%
last = tables["repetition"]["last_group"]
last.groupby("variant", sort=False)[["last_F_share", "last_A_share", "last_share", "val_loss"]].mean().round(3)

# %%
lesson.verdicts(tables, "C7")

# %% [markdown]
# ## Reading it
#
# READING
