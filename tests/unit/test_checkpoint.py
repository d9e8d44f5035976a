import fsspec
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from model.build import build_bundle
from model.checkpoint import checkpoint_id, load_bundle, save_bundle, set_latent_stats
from model.config import load_config
from model.engine import Engine, GenerationParams
from model.text import ByteTokenizer, HFTokenizer


def _music_tokenizer_dir(path) -> str:
    """A real (tiny) BPE tokenizer trained here and saved in the transformers layout."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["lo-fi piano 90 BPM A minor", "orchestral strings build at the end", "upbeat drums 120 BPM"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["[UNK]", "[PAD]"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(path)
    return str(path)


def _generate(bundle, seed=3):
    engine = Engine(bundle, max_batch=1)
    request = engine.make_request(
        prompt="lo-fi piano",
        frames=torch.ones(4, bundle.config.vision.feature_dim),
        params=GenerationParams(seed=seed, duration_s=0.6, steps=3),
        request_id="x",
    )
    return engine.generate([request])[0]


def test_save_load_round_trip_reproduces_generation(tmp_path):
    bundle = build_bundle(load_config("tiny"), seed=7)
    set_latent_stats(bundle.model, torch.linspace(-1, 1, 16), torch.linspace(0.5, 2, 16))
    save_bundle(bundle, str(tmp_path / "ckpt"))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "latent_stats.json",
        "model.safetensors",
        "vae.safetensors",
    ]
    loaded = load_bundle(str(tmp_path / "ckpt"))
    assert loaded.config == bundle.config
    assert torch.equal(loaded.model.latent_std, bundle.model.latent_std)
    a, b = _generate(bundle), _generate(loaded)
    assert torch.equal(a.latents, b.latents)
    assert (a.audio == b.audio).all()
    assert len(checkpoint_id(str(tmp_path / "ckpt"))) == 16


def test_checkpoint_loads_from_an_fsspec_uri():
    bundle = build_bundle(load_config("tiny", ["vision=null"]), seed=1)
    save_bundle(bundle, "memory://ckpts/run1")
    assert fsspec.filesystem("memory").exists("/ckpts/run1/model.safetensors")
    loaded = load_bundle("memory://ckpts/run1")
    for (name, p), (_, q) in zip(bundle.model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


def test_an_unfinished_checkpoint_is_refused(tmp_path):
    bundle = build_bundle(load_config("tiny"))
    save_bundle(bundle, str(tmp_path / "ckpt"))
    (tmp_path / "ckpt" / "config.json").unlink()  # the file written last: as if the save had crashed
    with pytest.raises(FileNotFoundError, match="not a Video-Robin checkpoint"):
        load_bundle(str(tmp_path / "ckpt"))
    assert not list((tmp_path / "ckpt").glob(".*tmp"))


def test_transformers_tokenizer_is_loaded_and_travels_with_the_checkpoint(tmp_path):
    directory = _music_tokenizer_dir(tmp_path / "tok")
    cfg = load_config("tiny", [f"text.tokenizer={directory}"])
    bundle = build_bundle(cfg)
    assert isinstance(bundle.tokenizer, HFTokenizer)
    ids = bundle.tokenizer.encode("lo-fi piano 90 BPM")
    assert ids != ByteTokenizer().encode("lo-fi piano 90 BPM") and max(ids) < 120
    save_bundle(bundle, str(tmp_path / "ckpt"))
    (tmp_path / "tok" / "tokenizer.json").unlink()  # the checkpoint must not depend on the original files
    loaded = load_bundle(str(tmp_path / "ckpt"))
    assert loaded.tokenizer.encode("lo-fi piano 90 BPM") == ids
