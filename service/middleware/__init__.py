"""ASGI middleware the service adds to (or swaps into) BentoML's stack."""
