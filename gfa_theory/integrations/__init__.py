"""Training-framework integrations: the accumulated gradient ``A`` of every block while a
framework you already use trains the model.

* :mod:`gfa_theory.integrations.hf` -- ``GradientFanInCallback`` for ``transformers.Trainer``
  (``pip install 'gfa-theory[hf]'``);
* :mod:`gfa_theory.integrations.lightning` -- ``GradientFanInCallback`` for Lightning
  (``pip install 'gfa-theory[lightning]'``).

Both record one step per optimizer step, from the gradient accumulated over its micro-batches
**before** the framework clips it, for the units (branches and blocks) that the model-family
registry (:mod:`gfa_theory.models.families`) finds in the model, with the fan-in the theory gives
them. They log ``A`` and the recent gradient norm of every unit to whatever the trainer reports
to, and write the package's ``gradients.csv`` (the long format of a ``gfa train`` run, read back by
:func:`gfa_theory.train.store.read_gradients`). The shared machinery is in
:mod:`gfa_theory.integrations.recording`. Nothing in the package imports this folder: the
frameworks stay optional.
"""
