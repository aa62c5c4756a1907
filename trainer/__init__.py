"""Shadowtune trainer: datasets from the call log, fine-tuning, registry and serving."""
