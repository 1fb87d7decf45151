"""Floor 4, training: data, run configs and their hash, the trainer, the run lifecycle, the run store,
memory estimates and the tracker-overhead benchmark.

Builds on the models and the instruments (the tracker rides along in every run).
"""
