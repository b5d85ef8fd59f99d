"""Training and loading tokenizers."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from storage.stages import StageWriter
from tasks.tokenizer import (
    EOS_TOKEN,
    TokenizerConfig,
    TokenizerError,
    build_tokenizer,
    load_pretrained_tokenizer,
    tokenizer_folder,
)


def test_trained_tokenizer_loads_with_autotokenizer(tokenizer_ref, tokenizer):
    loaded = AutoTokenizer.from_pretrained(str(tokenizer_folder(tokenizer_ref)))
    assert loaded.eos_token == EOS_TOKEN
    assert len(loaded) == len(tokenizer) <= 400
    text = "import pandas as pd\ndf = pd.read_csv('x.csv')\n"
    assert loaded.decode(loaded(text)["input_ids"]) == text  # byte-level: lossless


def test_pretrained_tokenizer_is_loaded_not_trained(tokenizer_ref, store):
    config = TokenizerConfig(pretrained=str(tokenizer_folder(tokenizer_ref)), vocab_size=300)
    counts = build_tokenizer(config, iter([]), StageWriter(store, "tokenizer", "k"))
    assert counts["vocab_size"] > 300  # the loaded tokenizer's size, not the config's


def test_pretrained_tokenizer_from_a_file_url(tokenizer_ref):
    loaded = load_pretrained_tokenizer("file://" + str(tokenizer_folder(tokenizer_ref)))
    assert loaded.eos_token == EOS_TOKEN


def test_missing_pretrained_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="could not load tokenizer"):
        load_pretrained_tokenizer(str(tmp_path / "no-such-tokenizer"))
