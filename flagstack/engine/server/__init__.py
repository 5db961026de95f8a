"""OpenAI-compatible HTTP server over AsyncLLM (`flagstack serve`)."""
from flagstack.engine.server.app import build_app, serve

__all__ = ["build_app", "serve"]
