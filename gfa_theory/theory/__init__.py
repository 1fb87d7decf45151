"""Floor 1, the theory: residual layouts, symbolic fan-in (sympy) and autograd path counts.

Imports nothing but :mod:`gfa_theory.errors`; everything above it may use it.
"""
