"""Calling upstream models: the direct OpenAI-compatible path and litellm for the rest."""
