"""Worked GFA studies, one module per claim, in teaching order. Each asks one of the paper's
questions; what was measured, and the verdict of each claim's declared rule, is in the report.

1. :mod:`experiments.fanin_vs_gradients` — do accumulated training gradients follow fan-in (C2-C4)?
2. :mod:`experiments.gradients_vs_importance` — are they associated with post hoc importance (C5)?
3. :mod:`experiments.equalization` — does equalizing what each block learns restore late layers?
   (the paper says it does not: C6, an equivalence test with a declared margin).
4. :mod:`experiments.repetition` — parameter-shared repetition raises the repeated group's fan-in
   (counted); does it raise late-layer value beyond parameter- and compute-matched controls (C7)?
5. :mod:`experiments.cascadeformer` — width tapered with depth: loss vs latency and throughput (C8).
6. :mod:`experiments.pruning` — CascadeFlow Pruning: removing the blocks of smallest accumulated
   gradient, against post hoc heuristics, with rank stability and scoring cost (C9-C11).
7. :mod:`experiments.mechanism` — beyond the paper: which account (path counts, gain-weighted
   aligned or orthogonal sums, the measured product) predicts the profile of A, and whether
   stream growth or gradient rank explains the rest (hypotheses H1-H5 in :mod:`experiments.verdicts.mechanism`,
   figures F9-F11, the report's "Beyond the paper").
8. :mod:`experiments.scale` — along scale: does each verdict hold, strengthen or fade as training
   lengthens (tokens per parameter) and models grow? Its own profiles (``smoke``, ``scale``,
   ``full``), not part of the default one; the report's "Along scale", figure F13.
9. :mod:`experiments.prediction` — beyond the paper, part 2: can the profile of A be predicted
   before training, for every norm placement (Pre-, Post-, Peri-, Mix-LN, DeepNorm, LayerNorm
   Scaling, the ResNets), and how early? Hypotheses H6-H7 in :mod:`experiments.verdicts.prediction`,
   figure F14; trained by the ``scale`` profile at the default profile's model size (not by the
   default profile, whose 30-minute budget is full), and by ``full`` and ``smoke``.

Each module has a docstring (hypothesis, prediction, method, how to read the result and its
figure), a ``configs(profile)`` listing its runs, a ``run(profile)`` returning a tidy DataFrame
(the key statistics in ``df.attrs["summary"]``) and a command line through
``python -m experiments <name> --profile smoke|lesson|default|full`` (``lesson``: the size the
notebooks in ``lessons/`` teach from).

The machinery they share, one job per module (imports run downward only):

* :mod:`experiments.plans` — typed study plans: ``plan(profile) -> StudyPlan``, and
  ``gpt_run`` / ``resnet_run`` that turn a plan into a run config;
* :mod:`experiments.executors` — where tasks run: the local process pool, Dask or SLURM (``--executor``),
  with retries of lost workers and one report of failed tasks;
* :mod:`experiments.runner` — ``Context``, the one way tasks are dispatched (``map_in_workers``) and
  the run cache (``run_many``, read back through the run store's checks), ``start`` of a study;
* :mod:`experiments.units` — unit tables (fan-in, accumulated gradients, ablation importance)
  and the fixed held-out batches;
* :mod:`experiments.summary` — the summary-row shape and its builders;
* :mod:`experiments.study_io` — a study's tables and stamp written (``finish``) and read back
  (``load_study``), ``study_module``;
* :mod:`experiments.upgrade` — a study cached by an older table layout brought up to date from
  its saved tables.

Above the study modules, :mod:`experiments.verdicts` holds every rule (claims C1-C11, hypotheses
H1-H7) from summary rows to findings, and its renderer (the report's table, a study's takeaway).
"""

STUDIES = ("fanin_vs_gradients", "gradients_vs_importance", "equalization", "repetition", "cascadeformer",
           "pruning", "mechanism")
EXPLORATORY = ()  # runnable with python -m experiments, not part of the report
ALONG_SCALE = ("scale",)  # its own profiles: the report's "Along scale" where they run
OUTSIDE_DEFAULT = ("prediction",)  # in the report, trained by the scale, full and smoke profiles only
