"""flagstack.engine: paged-KV inference for Qwen3 and Llama-family models on flagstack.ops."""
