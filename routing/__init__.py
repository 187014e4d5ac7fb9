"""Routing: providers, models, instances, API keys, the chat hot path and the request log."""
