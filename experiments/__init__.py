"""Worked GFA studies, one module per claim, in teaching order.

1. :mod:`experiments.fanin_vs_gradients` — accumulated training gradients follow fan-in.
2. :mod:`experiments.gradients_vs_importance` — and they are associated with post hoc importance.
3. :mod:`experiments.equalization` — equalizing gradient norms does not restore late layers.
4. :mod:`experiments.repetition` — parameter-shared repetition raises late-layer fan-in and value.
5. :mod:`experiments.cascadeformer` — width tapered with depth: loss vs latency and throughput.
6. :mod:`experiments.pruning` — CascadeFlow Pruning: removing the blocks of smallest accumulated
   gradient, against post hoc heuristics, with rank stability and scoring cost.

Each module has a docstring (hypothesis, prediction, method, how to read the result), a
``run(profile)`` returning a tidy DataFrame (the key statistics in ``df.attrs["summary"]``) and a
command line through ``python -m experiments <name> --profile smoke|default|full``.
"""

STUDIES = ("fanin_vs_gradients", "gradients_vs_importance", "equalization", "repetition", "cascadeformer",
           "pruning")
