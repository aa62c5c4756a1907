"""The review web pages (``/review``): server-rendered HTML over the call log.

`review.router` is the FastAPI router `gateway.app` includes; templates (Jinja2) and
the one stylesheet and script live next to it, with no build step and nothing fetched
from elsewhere.
"""
