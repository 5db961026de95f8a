"""OpenAI-compatible HTTP server over AsyncLLM (`flagstack serve`): app.py (routes, serve()),
protocol.py (request bodies, errors), params.py, handlers.py, chat.py, metrics.py, command.py (CLI).
Nothing is imported here, so the CLI can register its flags without loading FastAPI or torch."""
