"""The OpenAI-compatible server on AsyncEngine: request validation (protocol), response bodies and
SSE chunks (responses), Prometheus metrics (metrics). Importing these modules imports no torch,
FastAPI or engine: the server's cold start stays short.
"""
