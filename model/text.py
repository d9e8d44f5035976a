"""Prompt tokenizers: a transformers tokenizer from a local directory or URI, or a byte-level fallback."""

from __future__ import annotations

from typing import Protocol

from model.config import TextConfig
from model.errors import InputError
from model.io import local_dir_copy

BYTE_OFFSET = 3  # ids 0..2 are kept free (pad, bos, eos) so byte b maps to id b + 3


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


class ByteTokenizer:
    """UTF-8 bytes as ids: needs no files, used by the tiny preset and tests."""

    vocab_size = 256 + BYTE_OFFSET

    def encode(self, text: str) -> list[int]:
        return [b + BYTE_OFFSET for b in text.encode("utf-8")]


class HFTokenizer:
    """A transformers `AutoTokenizer` loaded from files only (no hub access)."""

    def __init__(self, directory: str) -> None:
        from transformers import AutoTokenizer

        with local_dir_copy(directory) as local:
            self.inner = AutoTokenizer.from_pretrained(local, local_files_only=True)
        self.vocab_size = len(self.inner)

    def encode(self, text: str) -> list[int]:
        return list(self.inner.encode(text, add_special_tokens=False))


def load_tokenizer(cfg: TextConfig, vocab_size: int) -> Tokenizer:
    tok = ByteTokenizer() if cfg.tokenizer is None else HFTokenizer(cfg.tokenizer)
    if tok.vocab_size > vocab_size:
        raise InputError(f"tokenizer has {tok.vocab_size} ids but the SemanticLM embeds only {vocab_size}")
    return tok
