"""Traffic modes: which variant serves a request, which one runs in the background."""
