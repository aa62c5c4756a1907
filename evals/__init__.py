"""Shadowtune evals: fast evals (judges, metrics), slow evals (outcomes), drift and retraining triggers."""
