# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 1: accumulated gradients follow fan-in
#
# Teaches from [`experiments/fanin_vs_gradients.py`](../experiments/fanin_vs_gradients.py) (its
# docstring has the method and the controls); the full-size result is claims C2-C4 of
# [`paper/REPORT.md`](../paper/REPORT.md) and figures F2-F4.
#
# **The theory.** In a Pre-LayerNorm residual stack, `x = x + f_i(LN(x))`, the gradient that
# reaches branch `i` is one identity path plus one path through every branch downstream of it.
# With `N` branches and one loss head that is `F(i) = N - i + 1` paths: fan-in falls
# *linearly* with depth. With a loss head after every block (deep supervision) every head adds
# its own paths and `F` falls *quadratically*, `(N-i+1)(N-i+2)/2`.
#
# **The prediction.** If gradient paths set how much a layer learns, the gradient a block
# accumulates over training, `A` (the sum over steps of its gradient norm), falls with depth
# as `F` does: early blocks collect the most, late blocks the least, and faster under deep
# supervision.

# %% [markdown]
# ## Your guess first
#
# Eight-block Transformers (a character-level model of the Python documentation, 200 AdamW
# steps, two seeds). Write down, before running the next cell:
#
# 1. Does `A` fall from the first block to the last? By how much: is the last block's `A` about
#    1/8 of the first block's (as `F` is), about the same, or something else?
# 2. Is the fall smooth like `F`, or concentrated somewhere?
# 3. With a loss head after every block, is the fall steeper or flatter?

# %%
import lesson

tables = lesson.run("fanin_vs_gradients")  # the first time about a minute on 2 idle cores (63 s of CPU); then cached

# %% [markdown]
# ## The figure
#
# Left: `A` per block normalized by its run's mean (band: 95 % t-interval over seeds) against the
# normalized fan-in; right: the same for the gradient of the residual stream at each branch output.

# %%
lesson.figure("F2", tables)

# %% [markdown]
# Deep supervision (a loss head after every block): `A` against the quadratic and the linear fan-in.

# %%
lesson.figure("F4", tables)

# %% [markdown]
# ## The numbers behind the figure
#
# `A / max` per block, mean over seeds, next to `F / max`, for one head (`final`) and deep
# supervision (`all`):

# %%
units = tables["fanin_vs_gradients"]["units"]
tr = units[units.family == "transformer"].copy()
tr["A/max"] = tr["A"] / tr.groupby("run_id")["A"].transform("max")
tr["F/max"] = tr["F"] / tr.groupby("run_id")["F"].transform("max")
profile = tr.groupby(["supervision", "order"])[["F/max", "A/max"]].mean().unstack("supervision").round(2)
profile

# %%
rows = [lesson.summary_row(tables, "fanin_vs_gradients", t) for t in (
    "transformer/final: per-run Spearman A vs linear F",
    "transformer/final: within-run exponent A ~ linear F",
    "transformer/final: within-run exponent A ~ linear F, first block excluded",
    "transformer/all: within-run exponent A ~ quadratic F")]
lesson.pd.DataFrame(rows)[["test", "estimate", "ci_low", "ci_high", "n"]].round(3)

# %% [markdown]
# The takeaway: what was predicted, what was measured, the verdict, by the report's own declared
# rules (`experiments/verdicts`) applied to this lesson's runs (two seeds: expect wide intervals).

# %%
lesson.takeaway(tables, "fanin_vs_gradients")

# %% [markdown]
# ## Reading it
#
# What the lesson profile shows (measured when this lesson was written; rerun and compare):
# with one head, `A / max` runs about 1.0, 0.36, 0.25, 0.21, 0.20, 0.19, 0.18, 0.19 and the
# per-run Spearman correlation of `A` with `F` is about 0.99: `A` falls with fan-in, **but not
# like it**. Most of the fall is between the first and second block; after that `A` is nearly
# flat, while `F` keeps falling by 1/8 of its maximum per block. The exponent of `A` on `F`
# is about 0.47 with every block and about 0.2 without the first one. With deep supervision
# `A` falls all the way down (to about 0.03 of the first block) and steeply: an exponent of
# about 0.8 on the quadratic fan-in. The right panel of F2 adds a twist: the gradient of the
# residual stream itself, at each branch output, is flat along depth; what falls is the gradient
# the branches' own parameters receive.
#
# So the *direction* of the prediction holds in a two-minute run, and the *shape* does not
# follow path counts: the first block, which also sits next to the embedding, carries most of
# the gradient. The default profile (three depths, three seeds, 400 steps: claims C2-C4 in the
# report) finds the same pattern at full size; lesson 7 asks what besides path counts shapes
# the profile. In one of your own runs: `gfa train --model gpt --set model.n_blocks=8` then
# `gfa plot results/gpt-<hash>`.
