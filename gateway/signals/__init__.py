"""Outcome signals: explicit feedback (`feedback`) and regenerations detected from the log (`regeneration`)."""
