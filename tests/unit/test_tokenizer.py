"""Training and loading tokenizers."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from storage.stages import StageWriter
from tasks.tokenizer.build import (
    EOS_TOKEN,
    TokenizerConfig,
    TokenizerError,
    build_tokenizer,
    load_pretrained_tokenizer,
    tokenizer_folder,
)


def test_trained_tokenizer_loads_with_autotokenizer(tokenizer_ref, tokenizer, session_store):
    loaded = AutoTokenizer.from_pretrained(str(tokenizer_folder(session_store, tokenizer_ref)))
    assert loaded.eos_token == EOS_TOKEN
    assert len(loaded) == len(tokenizer) <= 400
    text = "import pandas as pd\ndf = pd.read_csv('x.csv')\n"
    assert loaded.decode(loaded(text)["input_ids"]) == text  # byte-level: lossless


def test_pretrained_tokenizer_is_loaded_not_trained(tokenizer_ref, store, session_store):
    config = TokenizerConfig(
        pretrained=str(tokenizer_folder(session_store, tokenizer_ref)), vocab_size=300
    )
    counts = build_tokenizer(config, iter([]), StageWriter(store, "tokenizer", "0" * 20))
    assert counts["vocab_size"] > 300  # the loaded tokenizer's size, not the config's


def test_pretrained_tokenizer_from_a_file_url(tokenizer_ref, session_store):
    loaded = load_pretrained_tokenizer(
        "file://" + str(tokenizer_folder(session_store, tokenizer_ref))
    )
    assert loaded.eos_token == EOS_TOKEN


def test_missing_pretrained_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist or is not a folder"):
        load_pretrained_tokenizer(str(tmp_path / "no-such-tokenizer"))


def test_a_changed_pretrained_tokenizer_gets_a_new_key(tokenizer_ref, session_store, tmp_path):
    import json
    import shutil

    from tasks.tokenizer import TOKENIZER
    from tasks.tokenizer.build import tokenizer_params

    folder = tmp_path / "tok"
    shutil.copytree(tokenizer_folder(session_store, tokenizer_ref), folder)
    config = TokenizerConfig(pretrained=str(folder))
    before = TOKENIZER.spec(tokenizer_params(config), {}).key
    assert TOKENIZER.spec(tokenizer_params(config), {}).key == before
    tokenizer_json = folder / "tokenizer.json"
    data = json.loads(tokenizer_json.read_text())
    data["model"]["merges"] = data["model"]["merges"][:-1]  # edited in place: one merge less
    tokenizer_json.write_text(json.dumps(data))
    assert TOKENIZER.spec(tokenizer_params(config), {}).key != before


def test_a_local_looking_tokenizer_name_is_never_looked_up_on_the_hub(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_pretrained_tokenizer("./no/such/tokenizer")
