"""Floor 3, measurement: the gradient tracker, post hoc importance, statistics, timing.

Builds on the theory and the models; knows nothing of training runs, methods or studies.
"""
