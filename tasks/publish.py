"""Stage 7: publish a self-contained model folder and point ``LATEST`` at it.

The folder holds safetensors weights, config, generation config, tokenizer and a model card,
so ``transformers.pipeline("text-generation", model=folder)`` loads it. Versions live at
``{store}/models/{name}/{key}/``; ``{store}/models/{name}/LATEST`` names the newest.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import torch
import transformers
from pydantic import Field
from transformers import GenerationConfig

from storage.stages import (
    StageRef,
    StageSpec,
    StageWriter,
    code_version,
    part_folder,
    read_manifest,
    run_stage,
)
from storage.store import Store
from tasks.common import stage_logger, stage_task
from tasks.generation import complete, load_generator
from tasks.params import StageParams
from tasks.tokenizer import tokenizer_folder
from tasks.train import model_folder

LATEST = "LATEST"


class PublishConfig(StageParams):
    """Where and under what name the model is published."""

    model_name: str = Field(default="codeparrot-ds", pattern=r"^[a-z0-9][a-z0-9._-]*$")
    """Name of the model folder under ``models/`` in the store."""
    max_new_tokens: int = Field(default=64, ge=1)
    """Default generation length written into generation_config.json."""


def models_area(name: str) -> str:
    """Folder of a published model's versions, relative to the store root."""
    return f"models/{name}"


def _table(rows: dict) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows.items()]
    return "\n".join(lines)


def model_card(name: str, sources: dict[str, StageRef], metrics: dict, samples: list[dict]) -> str:
    """A README.md for the published folder: data, training config, metrics, samples, inputs."""
    training = read_manifest(sources["training"])
    data_counts = {
        key: value
        for key, value in {**sources["documents"].counts, **sources["tokens"].counts}.items()
        if isinstance(value, int)
    }
    shown_metrics = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    sample_text = "\n\n".join(f"```python\n{s['prompt']}{s['completion']}\n```" for s in samples)
    inputs = {stage: f"`{ref.stage}/{ref.key}`" for stage, ref in sources.items()}
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [gpt2, code, python, data-science, codeparrot-ds]
---

# {name}

A GPT-2 causal language model trained from scratch on Python data-science code
(pandas, scikit-learn, matplotlib, seaborn) by the CodeParrot-DS pipeline.

```python
from transformers import pipeline
generate = pipeline("text-generation", model="path/to/this/folder")
print(generate("# create scatter plot with x, y\\n")[0]["generated_text"])
```

## Data

{_table(data_counts)}

## Training configuration

```json
{json.dumps(training.params, indent=2, sort_keys=True)}
```

Training took {training.counts["train_seconds"]} s
at {training.counts["tokens_per_second"]} tokens/s ({training.counts["steps"]} optimizer steps,
{training.counts["tokens"]:,} tokens, mixed precision: {training.counts["mixed_precision"]}).

## Metrics (validation split)

{_table(shown_metrics)}

Perplexity is exp(total NLL / predicted tokens) with the plain, unweighted loss;
`course_perplexity` is the course's exp(mean of batch losses).

## Sample generations (greedy)

{sample_text}

## Built from

{_table(inputs)}

Library versions: torch {torch.__version__}, transformers {transformers.__version__},
Python {platform.python_version()}.
"""


def assemble_model_folder(
    folder: Path, name: str, sources: dict[str, StageRef], config: PublishConfig
) -> None:
    """Lay out weights, config, tokenizer, generation config and model card in a local folder."""
    shutil.copytree(model_folder(sources["training"]), folder, dirs_exist_ok=True)
    shutil.copytree(tokenizer_folder(sources["tokenizer"]), folder, dirs_exist_ok=True)
    model_config = json.loads((folder / "config.json").read_text())
    GenerationConfig(
        max_new_tokens=config.max_new_tokens,
        do_sample=False,
        bos_token_id=model_config["bos_token_id"],
        eos_token_id=model_config["eos_token_id"],
        pad_token_id=model_config["eos_token_id"],
    ).save_pretrained(folder)
    evaluation = sources["evaluation"].counts
    metrics = {k: v for k, v in evaluation.items() if k != "samples"}
    (folder / "README.md").write_text(model_card(name, sources, metrics, evaluation["samples"]))


def check_loads(folder: Path, prompt: str) -> str:
    """Load the folder through ``transformers.pipeline`` and complete a prompt, as a user would."""
    return complete(load_generator(str(folder)), prompt, max_new_tokens=8)


def publish_folder(
    sources: dict[str, StageRef], config: PublishConfig, writer: StageWriter, log
) -> dict:
    """Assemble, check and upload the model folder; return what the pipeline reports."""
    with tempfile.TemporaryDirectory(prefix="publish-") as tmp:
        folder = Path(tmp)
        assemble_model_folder(folder, config.model_name, sources, config)
        check_loads(folder, "import pandas as pd\n")
        writer.put_dir(folder, "")
    log.info("publish: %s loads through transformers.pipeline", writer.store.uri(writer.prefix))
    evaluation = sources["evaluation"].counts
    return {"perplexity": evaluation["perplexity"], "name": config.model_name}


def set_latest(store: Store, name: str, key: str) -> None:
    """Point ``models/{name}/LATEST`` at a published version."""
    store.write_json(
        f"{models_area(name)}/{LATEST}",
        {
            "version": key,
            "uri": store.uri(f"{models_area(name)}/{key}"),
            "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def latest_model(store: Store, name: str) -> StageRef:
    """The newest published version of a model."""
    rel = f"{models_area(name)}/{LATEST}"
    try:
        latest = store.read_json(rel)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no published model {name!r} in {store.url}: run `codeparrot-ds run` first, "
            "or pass --model with a model folder"
        ) from None
    return StageRef(stage=models_area(name), key=latest["version"], store_url=store.url)


def published_folder(ref: StageRef) -> Path:
    """A local folder holding a published model, every file checked against its manifest."""
    return part_folder(ref, "")


# Not cached by Prefect: a rerun must move LATEST back to this model even when it is published.
@stage_task("publish-model", None)
def publish_model(sources: dict[str, StageRef], config: PublishConfig, store_url: str) -> StageRef:
    """Publish the trained model with its tokenizer and model card; move LATEST to it."""
    log = stage_logger()
    store = Store(store_url)
    build = partial(publish_folder, sources, config, log=log)
    version = code_version([sys.modules[__name__]], transformers.__version__)
    spec = StageSpec.of(models_area(config.model_name), config, sources, version)
    ref = run_stage(store, spec, build, log)
    set_latest(store, config.model_name, ref.key)
    log.info("published %s", ref.uri)
    return ref
