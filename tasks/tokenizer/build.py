"""Stage tokenizer: train a byte-level BPE tokenizer on the training split, or load an existing one.

The result is a folder that ``AutoTokenizer.from_pretrained(folder)`` loads, with
``<|endoftext|>`` as its end-of-text (and beginning and unknown) token, as GPT-2's.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from storage.errors import UserError
from storage.shards import iter_document_batches
from storage.stages import StageRef, StageSpec, StageWriter, part_folder
from storage.store import Store, StoreError, fetch_folder, open_regular
from tasks.params import StageParams
from tasks.tokenizer import TOKENIZER

# transformers (and torch, which it imports: about 1.3 s) is imported only where a tokenizer is
# trained or loaded whole, so that a Dask worker that only tokenizes starts without it.
if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
TOKENIZER_DIR = "tokenizer"
# The files a tokenizer folder is loaded from: what a pretrained tokenizer's key hashes.
TOKENIZER_FILES = {
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "config.json",
}
TOKENIZER_SUFFIXES = (".model", ".tiktoken")


class TokenizerError(UserError, ValueError):
    """A tokenizer could not be trained or loaded."""


class TokenizerConfig(StageParams):
    """Train a tokenizer, or name one to load."""

    pretrained: str | None = None
    """Load this tokenizer instead of training: a local folder, a store/fsspec URL or a Hub name."""
    vocab_size: int = Field(default=50_000, ge=260, le=1 << 20)
    """Size of the trained vocabulary (the course used about 50k)."""
    min_frequency: int = Field(default=2, ge=1)
    """A merge must occur this often in the training text."""
    max_training_bytes: int | None = Field(default=200_000_000, ge=1)
    """Train on a sample of about this many bytes of the training split, the same files
    whatever the grouping (chosen by a hash of their content); empty uses all of it."""


def train_bpe_tokenizer(
    texts: Iterator[list[str]], vocab_size: int, min_frequency: int
) -> PreTrainedTokenizerFast:
    """Train a GPT-2 style byte-level BPE tokenizer on batches of texts."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, unk_token=EOS_TOKEN
    )


def limit_bytes(batches: Iterator[list[str]], max_bytes: int | None) -> Iterator[list[str]]:
    """Pass batches of texts through until ``max_bytes`` of text have gone by."""
    total = 0
    for batch in batches:
        yield batch
        total += sum(len(text) for text in batch)
        if max_bytes is not None and total >= max_bytes:
            return


def sample_batches(batches: Iterator[list[str]], fraction: float) -> Iterator[list[str]]:
    """Keep each text when a hash of its content falls below ``fraction``: a sample that
    depends on the texts alone, not on their order or on how the corpus was cut."""
    if fraction >= 1.0:
        yield from batches
        return
    bound = int(fraction * 2**64)
    for batch in batches:
        kept = [
            text
            for text in batch
            if int.from_bytes(
                hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                "big",
            )
            < bound
        ]
        if kept:
            yield kept


def sample_fraction(train_bytes: int, max_bytes: int | None) -> float:
    """The share of the training text to sample so that about ``max_bytes`` are kept."""
    if max_bytes is None or train_bytes <= max_bytes:
        return 1.0
    return max_bytes / train_bytes


def is_local_name(name: str) -> bool:
    """Whether a model or tokenizer name is a local path rather than a Hub name: it exists
    here, looks like a path (absolute, ``./``, ``../``, ``~``, more than one ``/``), or starts
    with a folder that exists here."""
    first = name.split("/", 1)[0]
    return (
        os.path.exists(name)
        or name.startswith(("/", ".", "~"))
        or name.count("/") > 1
        or ("/" in name and os.path.isdir(first))
    )


def resolve_pretrained(name: str, credentials: Mapping[str, Any] | None = None) -> Path:
    """A local folder holding the named tokenizer: a folder, a store/fsspec URL (read with
    ``credentials``, the store's S3 keys, if given), or a Hub name (downloaded with
    ``huggingface_hub``; offline, a clear error)."""
    if "://" in name:
        try:
            return fetch_folder(name, credentials)
        except (FileNotFoundError, StoreError) as err:
            raise TokenizerError(f"could not fetch tokenizer {name!r}: {err}") from None
    if is_local_name(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise TokenizerError(
                f"tokenizer folder {name!r} does not exist or is not a folder; give a folder "
                "holding tokenizer.json"
            )
        return folder
    from huggingface_hub import snapshot_download

    patterns = [*TOKENIZER_FILES, *(f"*{suffix}" for suffix in TOKENIZER_SUFFIXES)]
    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as err:  # noqa: BLE001 - every Hub failure gets the same advice
        raise TokenizerError(
            f"could not get tokenizer {name!r} from the Hugging Face Hub "
            f"({type(err).__name__}); offline, give a local folder holding tokenizer.json"
        ) from None


def tokenizer_fingerprint(folder: Path) -> str:
    """sha256 of the files a tokenizer is loaded from, so a changed tokenizer gets a new key."""
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in folder.iterdir()
        if p.name in TOKENIZER_FILES or p.name.endswith(TOKENIZER_SUFFIXES)
    )
    if not files:
        raise TokenizerError(f"{folder} holds no tokenizer file (tokenizer.json, vocab.json, ...)")
    for path in files:
        digest.update(path.name.encode() + b"\0")
        try:
            with open_regular(path) as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        except (OSError, StoreError) as err:
            raise TokenizerError(f"cannot read tokenizer file {path}: {err}") from None
    return digest.hexdigest()


def load_pretrained_tokenizer(name: str, credentials: Mapping[str, Any] | None = None):
    """Load a tokenizer from a local folder, a store/fsspec folder URL or a Hub name."""
    from transformers import AutoTokenizer

    folder = resolve_pretrained(name, credentials)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise TokenizerError(
            f"could not load tokenizer {name!r}: {err}. Give a folder holding tokenizer.json"
        ) from err
    if tokenizer.eos_token_id is None:
        raise TokenizerError(
            f"tokenizer {name!r} has no end-of-text token; GPT-2 training needs one"
        )
    return tokenizer


def token_id_bound(tokenizer) -> int:
    """One more than the largest id the tokenizer can emit: the model's vocabulary size and
    what the shard dtype must hold. Ids may be sparse, so ``len(tokenizer)`` is not enough."""
    return max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)


def build_tokenizer(
    config: TokenizerConfig,
    train_texts: Iterator[list[str]],
    writer: StageWriter,
    credentials: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Train or load the tokenizer and save it as the stage's ``tokenizer/`` folder."""
    if config.pretrained:
        tokenizer = load_pretrained_tokenizer(config.pretrained, credentials)
    else:
        # The tokenizers library parallelises training itself; a forked DataLoader later must
        # not inherit its thread pool, so say so explicitly instead of getting a warning.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
        texts = limit_bytes(train_texts, config.max_training_bytes)
        tokenizer = train_bpe_tokenizer(texts, config.vocab_size, config.min_frequency)
    with tempfile.TemporaryDirectory(prefix="tokenizer-") as folder:
        tokenizer.save_pretrained(folder)
        writer.put_dir(folder, TOKENIZER_DIR)
    return {"vocab_size": token_id_bound(tokenizer), "eos_token_id": tokenizer.eos_token_id}


def load_stage_tokenizer(store: Store, ref: StageRef):
    """Load the tokenizer that a committed tokenizer stage holds."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_folder(store, ref)))


class EncodingTokenizer:
    """What tokenizing needs of a stage's tokenizer (its Rust tokenizer, end-of-text id and
    vocabulary), loaded with the tokenizers library alone; the same ids as
    ``load_stage_tokenizer``'s. A Dask worker that tokenizes then starts without transformers
    and torch."""

    def __init__(self, backend: Tokenizer, folder: str, eos_token_id: object) -> None:
        self.backend_tokenizer = backend
        self.name_or_path = folder
        # The id was written by transformers when the stage was built: range-check it.
        if (
            not isinstance(eos_token_id, int)
            or isinstance(eos_token_id, bool)
            or not 0 <= eos_token_id < 1 << 32  # the library takes an unsigned 32-bit id
            or backend.id_to_token(eos_token_id) is None
        ):
            raise TokenizerError(
                f"the tokenizer in {folder} records end-of-text id {eos_token_id!r}, which is "
                "not one of its tokens; delete the tokenizer output and rerun"
            )
        self.eos_token_id = eos_token_id

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        """Token to id, added tokens included."""
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)


# Loaded tokenizers of this process, by (store URL, output): a worker loads each one once.
_BACKENDS: dict[tuple[str, str], tuple[Tokenizer, str]] = {}


def _cached_backend(store: Store, ref: StageRef) -> tuple[Tokenizer, str]:
    if (store.url, ref.prefix) not in _BACKENDS:
        if len(_BACKENDS) >= 4:
            _BACKENDS.pop(next(iter(_BACKENDS)))
        _BACKENDS[store.url, ref.prefix] = _load_backend(store, ref)
    return _BACKENDS[store.url, ref.prefix]


def _load_backend(store: Store, ref: StageRef) -> tuple[Tokenizer, str]:
    folder = tokenizer_folder(store, ref)
    path = folder / "tokenizer.json"
    try:
        return Tokenizer.from_file(str(path)), str(folder)
    except Exception as err:  # the library raises its own error types for a bad file
        raise TokenizerError(
            f"{path} is not a tokenizer ({type(err).__name__}: {err}); delete the tokenizer "
            "output and rerun"
        ) from None


def shared_stage_tokenizer(store: Store, ref: StageRef) -> EncodingTokenizer:
    """The encoding part of a committed tokenizer stage; its file is loaded once per process,
    so a worker that tokenizes many groups loads it once. Read-only use only (it is shared)."""
    backend, folder = _cached_backend(store, ref)
    return EncodingTokenizer(backend, folder, ref.counts.get("eos_token_id"))


def tokenizer_folder(store: Store, ref: StageRef) -> Path:
    """A local folder holding the tokenizer of a committed tokenizer stage."""
    return part_folder(store, ref, TOKENIZER_DIR)


def tokenizer_params(config: TokenizerConfig, credentials: Mapping[str, Any] | None = None) -> dict:
    """The tokenizer stage's parameters: a pretrained tokenizer is keyed by its files' hash,
    not its name, so one changed in place gets a new key."""
    params = config.model_dump(mode="json")
    if config.pretrained:
        folder = resolve_pretrained(config.pretrained, credentials)
        params["pretrained_sha256"] = tokenizer_fingerprint(folder)
    return params


def tokenizer_spec(
    documents: StageRef, config: TokenizerConfig, credentials: Mapping[str, Any] | None = None
) -> StageSpec:
    """Where the tokenizer for these documents and settings lives; a loaded tokenizer does not
    depend on our documents, a trained one does."""
    inputs = {} if config.pretrained else {"filter": documents}
    return TOKENIZER.spec(tokenizer_params(config, credentials), inputs)


def training_texts(store: Store, documents: StageRef, config: TokenizerConfig) -> Iterator:
    """The batches of training-split texts the tokenizer trains on (a sample of at most
    ``max_training_bytes``)."""
    fraction = sample_fraction(documents.counts.get("bytes_kept", 0), config.max_training_bytes)
    return sample_batches(iter_document_batches(store, documents, "train", 1000), fraction)
