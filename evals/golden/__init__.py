"""Golden sets: fixed examples with references, scored with deterministic metrics.

* `evals.golden.sets`: read example sets (a trainer dataset or a golden file), run and score a model.
* `evals.golden.metrics`: the deterministic metrics (exact match, JSON fields, classification, plug-ins).
* `evals.golden.squad`: SQuAD exact match and token F1.
"""
