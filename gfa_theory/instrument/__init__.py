"""Floor 3, measurement: the gradient tracker, evaluation, post hoc importance, statistics.

Builds on the theory and the models; knows nothing of training runs, methods or studies.
"""
