"""Shadowtune gateway: OpenAI-compatible proxy, call log and traffic modes."""

__version__ = "0.1.0"
