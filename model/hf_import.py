"""Load a Llama/Qwen2/Mistral-style decoder checkpoint (transformers layout) into the SemanticLM.

The paper initialises the SemanticLM from a pretrained 0.5B LM (DESIGN.md §1). Our backbone computes the
same function as transformers' Llama/Qwen2 decoders, so loading is an explicit key map with every shape
asserted; nothing is skipped silently except the LM head, which the SemanticLM does not have.
"""

from __future__ import annotations

import json
import re

import torch

from model.config import SemanticLMConfig
from model.errors import InputError
from model.io import open_uri, uri_exists, uri_join
from model.weights import read_safetensors

SUPPORTED_TYPES = ("llama", "qwen2", "mistral")

_LAYER_MAP = {
    "self_attn.q_proj": "attn.q",
    "self_attn.k_proj": "attn.k",
    "self_attn.v_proj": "attn.v",
    "self_attn.o_proj": "attn.o",
    "mlp.gate_proj": "mlp.gate",
    "mlp.up_proj": "mlp.up",
    "mlp.down_proj": "mlp.down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "mlp_norm",
}
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")


def semantic_lm_config_from_hf(hf: dict) -> SemanticLMConfig:
    """Our SemanticLM config for a transformers `config.json` (as a dict); refuses what we would compute wrongly."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_TYPES:
        raise InputError(f"unsupported model_type {model_type!r} (supported: {', '.join(SUPPORTED_TYPES)})")
    rope = hf.get("rope_parameters") or {"rope_type": "default", "rope_theta": hf.get("rope_theta", 10000.0)}
    if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        raise InputError(f"RoPE scaling {rope.get('rope_type')!r} is not supported; only plain RoPE is")
    if hf.get("use_sliding_window"):
        raise InputError("sliding-window attention is not supported")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias"):
        raise InputError("only bias-free SwiGLU (silu) MLPs are supported")
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hidden // heads):
        raise InputError(f"head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
    return SemanticLMConfig(
        hidden=hidden,
        layers=hf["num_hidden_layers"],
        heads=heads,
        kv_heads=hf.get("num_key_value_heads", heads),
        ffn=hf["intermediate_size"],
        rope_theta=rope["rope_theta"],
        norm_eps=hf["rms_norm_eps"],
        qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias")),
        vocab_size=hf["vocab_size"],
    )


def map_hf_key(key: str) -> str | None:
    """transformers key -> our key under VideoRobin (`embed.*`, `semantic_lm.*`); None for the LM head."""
    key = key.removeprefix("model.")
    if key == "lm_head.weight":
        return None
    if key == "embed_tokens.weight":
        return "embed.weight"
    if key == "norm.weight":
        return "semantic_lm.norm.weight"
    match = _LAYER_KEY.match(key)
    if match and match.group(2) in _LAYER_MAP:
        return f"semantic_lm.layers.{match.group(1)}.{_LAYER_MAP[match.group(2)]}.{match.group(3)}"
    raise InputError(f"unexpected key {key!r} in the checkpoint")


def read_hf_weights(directory: str) -> dict[str, torch.Tensor]:
    """All tensors of a transformers checkpoint directory (single or sharded safetensors)."""
    index = uri_join(directory, "model.safetensors.index.json")
    if uri_exists(index):
        with open_uri(index, "rt") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        tensors.update(read_safetensors(uri_join(directory, shard)))
    return tensors


def load_hf_semantic_lm(model: torch.nn.Module, directory: str) -> None:
    """Copy a transformers decoder's weights into `model.embed` and `model.semantic_lm`.

    The checkpoint's config must describe exactly the SemanticLM the model was built with.
    """
    with open_uri(uri_join(directory, "config.json"), "rt") as f:
        hf_cfg = semantic_lm_config_from_hf(json.load(f))
    if hf_cfg != model.cfg.semantic_lm:
        raise InputError(f"checkpoint's SemanticLM {hf_cfg} does not match the model's {model.cfg.semantic_lm}")
    ours = {k: v for k, v in model.state_dict().items() if k.startswith(("embed.", "semantic_lm."))}
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in read_hf_weights(directory).items():
        target = map_hf_key(key)
        if target is None:
            continue
        if target not in ours:
            raise InputError(f"{key} maps to {target}, which the model does not have")
        if tuple(tensor.shape) != tuple(ours[target].shape):
            raise InputError(f"{key}: shape {tuple(tensor.shape)} != {tuple(ours[target].shape)}")
        mapped[target] = tensor
    missing = sorted(set(ours) - set(mapped))
    if missing:
        raise InputError(f"checkpoint lacks {len(missing)} SemanticLM tensors, e.g. {missing[:3]}")
    with torch.no_grad():
        for target, tensor in mapped.items():
            ours[target].copy_(tensor)
