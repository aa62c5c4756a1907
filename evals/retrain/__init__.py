"""Retraining: trigger policies, the pipeline they start, and the loop's last step (shadow -> canary).

* `triggers`: policies, signals, the pipeline and its run records (``shadowtune triggers``);
* `steps`: the built-in steps, backed by the trainer;
* `progress`: per-step progress (bars on a terminal, the run record for ``triggers status``);
* `control`: pause, resume, cancel and the back-off after a rejected run;
* `promote`: a shadow candidate the judge finds not worse goes to canary by itself;
* `cli`: the commands added to the ``triggers`` group.

Nothing imports this package except the CLI's registration (`evals.cli`); the gateway runs it
as ``shadowtune triggers run`` subprocesses on a schedule (`gateway.jobs`).
"""
