"""flagstack: a Triton-native LLM stack (ops -> engine -> annotate)."""
__version__ = "0.1.0"
