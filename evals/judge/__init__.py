"""Offline judging: pairwise LLM-as-judge runs, juries of judges, the model-family guard.

* `evals.judge.pairwise`: one judge run over shadow pairs (order, identical answers, cost, report).
* `evals.judge.jury`: how the votes of several judges make one verdict per item.
* `evals.judge.families`: the same-family guard and the self-preference measure.
* `evals.judge._client`, `evals.judge._prompt`: the judge model client and its prompt.
"""
