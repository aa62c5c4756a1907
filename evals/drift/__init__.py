"""Drift: does live traffic (and what the models write) still look like the data the model learned from?"""

from evals.drift.check import *  # noqa: F403  (split into modules in the next commit)
from evals.drift.check import _output_checks  # noqa: F401
