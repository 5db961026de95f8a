"""Model classes by the HF `architectures` name they implement."""
from __future__ import annotations

from flagstack.engine.models.layers import CausalLM
from flagstack.engine.models.llama import LlamaForCausalLM
from flagstack.engine.models.qwen3 import Qwen3ForCausalLM

MODEL_CLASSES: dict[str, type[CausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}

__all__ = ["CausalLM", "LlamaForCausalLM", "Qwen3ForCausalLM", "MODEL_CLASSES"]
