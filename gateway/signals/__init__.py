"""Outcome signals: explicit feedback (`feedback`) and regenerations found in the log (`regeneration`)."""
