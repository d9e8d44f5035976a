"""`videorobin train-tokenizer`: a prompt tokenizer learned from the training captions (`tokenizers` BPE).

Lower-cased, split on whitespace and punctuation, and every digit its own token, so "128 BPM" reads as
"1 2 8 bpm": tempi the captions never named are spelled from digits the model has seen, which a learned
merge ("128") would hide. The rest is byte-pair merges up to `vocab_size`. Saved in the transformers layout
(`tokenizer.json` + config), which `model.text.HFTokenizer` loads and checkpoints carry in `tokenizer/`.
"""

from __future__ import annotations

import os
import tempfile

from jobs.catalogue import read_table
from model.errors import InputError
from model.io import uri_join, write_bytes_atomic

SPECIAL_TOKENS = ["[PAD]", "[UNK]"]
TOKENIZER_FILE = "tokenizer.json"


def read_captions(manifest: str) -> list[str]:
    rows = read_table(manifest)
    if "caption" not in rows[0]:
        raise InputError(f"{manifest}: no caption column")
    return [str(r["caption"]) for r in rows if r.get("caption")]


def train_tokenizer(captions: list[str], vocab_size: int):
    """A `PreTrainedTokenizerFast` with BPE merges learned from `captions`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.decoder = decoders.BPEDecoder()
    tok.train_from_iterator(captions, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def run(manifest: str, out: str, vocab_size: int) -> dict:
    """Train on the manifest's captions and write the tokenizer directory to `out` (any fsspec URI)."""
    captions = read_captions(manifest)
    tokenizer = train_tokenizer(captions, vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for name in sorted(os.listdir(tmp), key=lambda n: n == TOKENIZER_FILE):  # the one that loads: last
            with open(os.path.join(tmp, name), "rb") as f:
                write_bytes_atomic(uri_join(out, name), f.read())
    lengths = [len(tokenizer.encode(c, add_special_tokens=False)) for c in captions]
    return {"tokenizer": out, "vocab": len(tokenizer), "captions": len(captions), "max_tokens": max(lengths)}
