"""Online statistics over live traffic, and the controller that acts on them.

* `evals.online.outcomes`: per-arm outcome rates, intervals and tests over the log.
* `evals.online.outcomes_query`: the store's outcome query (`gateway.store.outcomes`) as cells.
* `evals.online.strata`: stratified differences and their evidence.
* `evals.online.decision`: the sequential decision (promote, hold, roll back).
* `evals.online.controller`: the job that applies decisions to the gateway.
* `evals.online.canary_clock`: when a route entered canary.
"""
