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
# # Lesson 6: CascadeFlow Pruning
#
# Teaches from [`experiments/pruning.py`](../experiments/pruning.py); the full-size result is
# claims C9-C11 of [`paper/REPORT.md`](../paper/REPORT.md), tables T2-T4 and T6 and the bottom of
# figure F8.
#
# **The idea.** `A` is recorded during ordinary training, so ranking blocks by it costs nothing:
# remove the `k` blocks with the least accumulated gradient ("CascadeFlow"). The post hoc
# heuristics need calibration batches and extra forward or backward passes.
#
# **The prediction (the paper's), and its control.** CascadeFlow prunes with a lower held-out
# perplexity than Block Influence, angular distance, Taylor, magnitude and random, with a more
# stable ranking. The control: lesson 1 showed `A` falling with depth, so CascadeFlow's ranking is
# close to "remove the last `k` blocks" (`last`), which needs no measurement at all. Last-k is the
# baseline that decides whether `A` adds anything beyond depth.
#
# The models are lesson 1's eight-block Transformers and six-block ResNets, read back from the
# cache: only the pruning, healing and scoring run here.

# %% [markdown]
# ## Your guess first
#
# 1. Removing two of eight blocks: does CascadeFlow give a lower held-out perplexity than Block
#    Influence? Than random?
# 2. How often does CascadeFlow remove *different* blocks from last-k?
# 3. Does a short healing (a few AdamW steps after pruning) change the ranking of methods?

# %%
import lesson
from figures import efficiency

tables = lesson.run("fanin_vs_gradients", "pruning")

# %% [markdown]
# ## The figure
#
# Held-out perplexity of the pruned Transformer against the number of removed blocks `k`, each
# seed relative to its unpruned model, without healing (left) and after healing (right).

# %%
fig, axs = lesson.plt.subplots(1, 2, figsize=(10.5, 4), sharey=True)
efficiency.pruning_panel(tables, "pruned", relative=True, ax=axs[0])
efficiency.pruning_panel(tables, "healed", relative=True, ax=axs[1])
axs[0].legend(fontsize=7)
lesson.show(fig, "F8-pruning")

# %% [markdown]
# ## The numbers behind the figure
#
# Perplexity at each `k` per method (Transformer, no healing; mean over seeds), and how often
# CascadeFlow and last-k remove different blocks:

# %%
r = tables["pruning"]["results"]
tr = r[(r.family == "transformer") & (r.stage == "pruned")]
tr.pivot_table(index="method", columns="k", values="perplexity", aggfunc="mean").round(2)

# %% [markdown]
# Table T6 of the report: CascadeFlow against depth order (last-k) on exactly the runs where the
# two remove different blocks.

# %%
efficiency.t6(tables)

# %% [markdown]
# The takeaway: what was predicted, what was measured, the verdict, by the report's own declared
# rules (`experiments/verdicts`) applied to this lesson's runs (two seeds: expect wide intervals).

# %%
lesson.takeaway(tables, "pruning")

# %% [markdown]
# ## Reading it
#
# What the lesson profile shows (measured when this lesson was written): every informed method
# prunes about equally well and all of them far better than random. Removing two of eight blocks
# moves the perplexity from 12.4 to about 12.6 for CascadeFlow, Block Influence, angular
# distance, magnitude and last-k alike, against 14.3 for random; a short healing brings them all
# back to about 12.35. The greedy ablation oracle is only a little better.
#
# The control is the lesson: CascadeFlow's ranking agrees with plain depth order almost exactly
# (Kendall tau about 0.96), and at `k = 2, 3, 4` it removes *the same blocks* as last-k in every
# run, so nothing there can tell "rank by `A`" from "drop the last blocks" (T6: 1 differing run
# of 2 at `k = 1`, none after). That follows from lessons 1-2: `A` falls with depth, so ranking by
# `A` *is* nearly ranking by depth. The rules read **inconclusive** for C9-C11: not a failure of
# CascadeFlow, but a study that at this size cannot separate it from its cheapest rival. The
# default profile's result is claims C9-C11 and tables T2-T4, T6 of the report.
