"""The SemanticLM computes exactly what transformers' Llama/Qwen2 decoders compute, and loads their checkpoints."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel, Qwen2Config, Qwen2Model

from model.config import load_config
from model.hf_import import load_hf_semantic_lm, semantic_lm_config_from_hf
from model.videorobin import VideoRobin

SIZES = dict(
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=400,
    rms_norm_eps=1e-6,
)


def _ours_for(directory) -> VideoRobin:
    with open(directory / "config.json") as f:
        lm = semantic_lm_config_from_hf(json.load(f))
    tiny = load_config("tiny")
    cfg = tiny.model_copy(update={"semantic_lm": lm, "rite": tiny.rite.model_copy(update={"hidden": lm.hidden})})
    model = VideoRobin(cfg).eval()
    load_hf_semantic_lm(model, str(directory))
    return model


@pytest.mark.parametrize(
    "hf_cls, cfg_cls, extra",
    [
        (LlamaModel, LlamaConfig, {"rope_theta": 500000.0}),
        (Qwen2Model, Qwen2Config, {}),
        (LlamaForCausalLM, LlamaConfig, {}),  # "model." prefix and an LM head that we drop
    ],
)
def test_semantic_lm_matches_transformers(tmp_path, hf_cls, cfg_cls, extra):
    torch.manual_seed(0)
    reference = hf_cls(cfg_cls(**SIZES, **extra)).eval()
    with torch.no_grad():  # make biases and norms non-trivial so every mapped tensor matters
        for name, p in reference.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    reference.save_pretrained(tmp_path)
    ours = _ours_for(tmp_path)
    decoder = reference.model if hasattr(reference, "lm_head") else reference
    ids = torch.randint(0, 400, (2, 11))
    embeds = torch.randn(2, 11, 64)
    with torch.no_grad():
        want_ids = decoder(input_ids=ids).last_hidden_state
        want_emb = decoder(inputs_embeds=embeds).last_hidden_state
        got_ids = ours.semantic_lm(ours.embed(ids))
        got_emb = ours.semantic_lm(embeds)
    assert torch.allclose(got_ids, want_ids, atol=1e-5), (got_ids - want_ids).abs().max()
    assert torch.allclose(got_emb, want_emb, atol=1e-5), (got_emb - want_emb).abs().max()


def test_mismatched_checkpoint_is_refused(tmp_path):
    LlamaModel(LlamaConfig(**SIZES)).save_pretrained(tmp_path)
    model = VideoRobin(load_config("tiny"))
    with pytest.raises(ValueError, match="does not match"):
        load_hf_semantic_lm(model, str(tmp_path))


def test_rope_scaling_is_refused():
    cfg = LlamaConfig(**SIZES, rope_scaling={"rope_type": "linear", "factor": 2.0}).to_dict()
    with pytest.raises(ValueError, match="RoPE scaling"):
        semantic_lm_config_from_hf(cfg)
