"""Both chunking modes, and the shard format."""

from __future__ import annotations

import numpy as np
import pytest

from storage.shards import TokenShardWriter, load_token_shards, token_dtype
from storage.stages import StageRef, StageWriter
from tasks.tokenize.build import (
    Packer,
    TokenizeConfig,
    course_chunks,
    encode_batch,
    tokenize_documents,
)


def course_tokenize(tokenizer, contents: list[str], context_length: int) -> list[list[int]]:
    """The course's tokenize function, verbatim in substance."""
    outputs = tokenizer(
        contents,
        truncation=True,
        max_length=context_length,
        return_overflowing_tokens=True,
        return_length=True,
    )
    input_batch = []
    for length, input_ids in zip(outputs["length"], outputs["input_ids"], strict=True):
        if length == context_length:
            input_batch.append(input_ids)
    return input_batch


def test_course_mode_matches_the_course_function(tokenizer, documents_ref, session_store):
    from storage.shards import iter_document_batches

    contents = [
        text
        for batch in iter_document_batches(session_store, documents_ref, "train")
        for text in batch
    ]
    for context_length in (16, 128):
        expected = course_tokenize(tokenizer, contents, context_length)
        # the course's call above leaves truncation on in the backend: ours must not be cut short
        ours = course_chunks(encode_batch(tokenizer, contents), context_length)
        assert len(expected) > 0
        assert ours.tolist() == expected


def test_packed_mode_keeps_everything_but_the_final_remainder():
    packer = Packer(context_length=4, eos_token_id=0)
    rows = [packer.add([[1, 2, 3], [4, 5]]), packer.add([[6, 7, 8, 9, 10]])]
    stream = np.concatenate(rows).reshape(-1).tolist()
    assert stream == [1, 2, 3, 0, 4, 5, 0, 6, 7, 8, 9, 10]
    assert packer.remainder == 1  # the EOS after the last file waits for a row


def test_course_chunks_drop_short_files_and_tails():
    rows = course_chunks([[1, 2, 3], [1, 2, 3, 4, 5, 6, 7, 8, 9]], context_length=4)
    assert rows.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_shards_round_trip_as_uint16(store):
    writer = StageWriter(store, "tokenize/groups", "0" * 20)
    shards = TokenShardWriter(writer, "train", 8, token_dtype(50_000), rows=3)
    data = np.arange(7 * 8).reshape(7, 8)
    shards.add(data[:5])
    shards.add(data[5:])
    shards.flush()
    assert shards.shard_rows == [3, 3, 1]
    store.write_json(
        f"tokenize/groups/{'0' * 20}/_manifest.json",
        {
            "stage": "tokenize/groups",
            "key": "0" * 20,
            "code_version": "t",
            "params": {},
            "inputs": {},
            "parts": {k: v.model_dump() for k, v in writer.parts.items()},
            "counts": {},
            "created_at": "now",
        },
    )
    arrays = load_token_shards(store, StageRef(stage="tokenize/groups", key="0" * 20), "train")
    assert all(a.dtype == np.uint16 for a in arrays)
    assert np.concatenate(arrays).tolist() == data.tolist()
    assert token_dtype(70_000) == np.uint32


def test_tokenize_documents_counts_both_splits(tokenizer, documents_ref, data_store):
    writer = StageWriter(data_store, "tokenize/groups", "0" * 20)
    config = TokenizeConfig(mode="packed", context_length=32, rows_per_shard=50)
    counts = tokenize_documents(data_store, documents_ref, tokenizer, config, writer)
    for split in ("train", "valid"):
        # packed: every file plus one EOS, cut into rows; only the final remainder is dropped
        assert (
            counts[f"{split}_rows"]
            == (counts[f"{split}_tokens"] + counts[f"{split}_documents"]) // 32
        )
        assert counts[f"{split}_shards"] >= 1


def _sparse_tokenizer(top_id: int):
    """A word-level tokenizer of four words whose last id is ``top_id``: len() is 4."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "pandas": 1, "plt": 2, "seaborn": top_id}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )


def test_ids_above_uint16_are_kept_in_uint32_shards(store):
    from tasks.tokenizer.build import token_id_bound

    tokenizer = _sparse_tokenizer(70_000)
    assert len(tokenizer) <= 1 << 16  # what the dtype used to be sized from
    bound = token_id_bound(tokenizer)
    assert bound == 70_001
    writer = StageWriter(store, "tokenize/groups", "0" * 20)
    shards = TokenShardWriter(writer, "train", 4, token_dtype(bound), rows=10)
    ids = encode_batch(tokenizer, ["seaborn pandas plt seaborn"])
    shards.add(np.asarray(ids))
    shards.flush()
    assert shards.dtype == np.uint32
    import pyarrow.ipc as ipc

    table = ipc.open_file(
        store.local_file(f"tokenize/groups/{'0' * 20}/train/shard-00000.arrow")
    ).read_all()
    assert table.column("input_ids").to_pylist() == [[70_000, 1, 2, 70_000]]


def test_an_id_that_does_not_fit_is_an_error_naming_the_tokenizer(store):
    from storage.shards import TokenRangeError

    writer = StageWriter(store, "tokenize/groups", "0" * 20)
    shards = TokenShardWriter(
        writer, "train", 4, np.dtype(np.uint16), rows=10, source="tokenizer 'sparse'"
    )
    with pytest.raises(TokenRangeError, match="tokenizer 'sparse' emitted token id 70,000"):
        shards.add(np.asarray([[70_000, 1, 2, 3]]))
    assert not writer.parts  # nothing written, nothing wrapped


def test_the_workers_tokenizer_encodes_as_the_transformers_one(
    tokenizer, tokenizer_ref, documents_ref, session_store
):
    """Tokenize tasks load the stage's tokenizer without transformers: same ids, same bound."""
    from storage.shards import iter_document_batches
    from tasks.tokenizer.build import shared_stage_tokenizer, token_id_bound

    light = shared_stage_tokenizer(session_store, tokenizer_ref)
    texts = [
        t for batch in iter_document_batches(session_store, documents_ref, "train") for t in batch
    ]
    texts.append("import pandas as pd<|endoftext|>df = pd.DataFrame()")  # a special token inline
    assert encode_batch(light, texts) == encode_batch(tokenizer, texts)
    # and the same ids as transformers' own call (which computes the offsets we skip)
    assert encode_batch(light, texts) == tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert light.eos_token_id == tokenizer.eos_token_id
    assert token_id_bound(light) == token_id_bound(tokenizer)


@pytest.mark.parametrize("eos", [None, "0", [0], 10**9, -1, 1 << 40, True])
def test_a_recorded_end_of_text_id_that_is_no_token_is_a_clear_error(
    eos, tokenizer_ref, session_store
):
    from tasks.tokenizer.build import TokenizerError, shared_stage_tokenizer

    ref = tokenizer_ref.model_copy(update={"counts": {**tokenizer_ref.counts, "eos_token_id": eos}})
    with pytest.raises(TokenizerError, match="end-of-text id .* not one of its tokens; delete"):
        shared_stage_tokenizer(session_store, ref)
