"""Thin FastAPI routers for everything off the hot path."""
