"""Named presets: plain data, importable without Prefect (the GPU benchmark reads them)."""

from __future__ import annotations

from typing import Any

# Overrides of the defaults (which are the course's). ``smoke`` learns visibly in a few minutes
# on a 2-core CPU; ``course`` is the course's 124M model on the course's data, for a GPU.
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        # The first 150 MB of local code in hash order: about 10,000 files, 950 kept.
        "corpus": {"max_bytes": 150_000_000, "max_file_bytes": 200_000},
        "filter": {"valid_fraction": 0.05},
        "tokenizer": {"vocab_size": 4_096},
        "tokenize": {"mode": "packed"},
        "model": {"n_layer": 4, "n_embd": 128, "n_head": 4, "dropout": 0.0},
        "train": {
            # 16 seqs * 128 tokens * 2 accumulation = 4,096 tokens per optimizer step
            "batch_size": 16,
            "gradient_accumulation_steps": 2,
            "learning_rate": 3e-3,
            "warmup_steps": 30,
            "max_steps": 600,
            "eval_interval": 200,
            "eval_batches": 20,
            "log_interval": 20,
            "checkpoint_interval": 100,
        },
        "evaluate": {"max_new_tokens": 32},
    },
    # Usage code from data-science packages' source archives (examples, galleries, tutorials,
    # notebooks), read from the package index, and a model sized for a 2-core CPU.
    "ds": {
        "corpus": {
            "source": "packages",
            "packages": ["matplotlib", "scikit-learn", "seaborn", "statsmodels", "pandas"],
            "member_patterns": [
                "examples/*",
                "galleries/*",
                "doc/*",
                "docs/*",
                "tutorials/*",
                "*.ipynb",
            ],
            "max_file_bytes": 200_000,
        },
        "filter": {"valid_fraction": 0.05},
        "tokenizer": {"vocab_size": 8_192},
        "tokenize": {"mode": "packed"},
        "model": {"n_layer": 4, "n_embd": 256, "n_head": 4, "dropout": 0.0},
        "train": {
            # 16 seqs * 128 tokens * 2 accumulation = 4,096 tokens per optimizer step
            "batch_size": 16,
            "gradient_accumulation_steps": 2,
            "learning_rate": 2e-3,
            "warmup_steps": 50,
            "max_steps": 1_000,
            "epochs": 20,
            "eval_interval": 250,
            "eval_batches": 20,
            "log_interval": 25,
            "checkpoint_interval": 250,
        },
    },
    "course": {
        "corpus": {"source": "hub"},
        "filter": {"valid_fraction": 0.005},
        "tokenizer": {"vocab_size": 50_000},
    },
}
