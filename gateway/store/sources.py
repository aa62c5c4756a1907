"""Event sources the log tells apart (import-light: a request worker imports it)."""

REVIEWER_SOURCES = ("reviewer", "review")
"""``events.source`` of events posted by reviewers (``review`` in logs written before schema 2)."""
