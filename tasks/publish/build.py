"""Stage publish: a self-contained model folder, and ``LATEST`` pointed at it.

The folder holds safetensors weights, config, generation config, tokenizer and a model card,
so ``transformers.pipeline("text-generation", model=folder)`` loads it. Versions live at
``{store}/publish/{name}/{key}/``; ``{store}/publish/{name}/LATEST`` names the newest.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch
import transformers
from huggingface_hub import ModelCard, ModelCardData
from pydantic import Field
from transformers import GenerationConfig

from storage.errors import RunFailure
from storage.stages import (
    KEY_PATTERN,
    StageRef,
    StageSpec,
    StageWriter,
    input_ref,
    part_folder,
    read_manifest,
    read_part,
)
from storage.store import DamagedObjectError, Store, StoreError
from tasks.completions import percent
from tasks.evaluate.build import METRICS_PART
from tasks.evaluate.generation import complete, load_generator
from tasks.evaluate.humaneval import describe as describe_humaneval
from tasks.params import StageParams
from tasks.publish import PUBLISH
from tasks.publish.markdown import code_block, inline_text, table
from tasks.tokenizer.build import tokenizer_folder
from tasks.train.build import model_folder

LATEST = "LATEST"


class PublishConfig(StageParams):
    """Where and under what name the model is published."""

    model_name: str = Field(default="codeparrot-ds", pattern=r"^[a-z0-9][a-z0-9._-]*$")
    """Name of the model folder under publish/ in the store."""
    max_new_tokens: int = Field(default=64, ge=1)
    """Default generation length written into generation_config.json."""
    tolerance: float = Field(default=0.02, ge=0.0, le=1.0)
    """Quality gate: a model whose API accuracy is below the current model's by more than this
    (0.02 = 2 points), or whose perplexity on the same tokenizer and split is higher by more
    than this fraction, is stored but not promoted."""
    force: bool = False
    """Promote the new model whatever the quality gate says."""


# Settings of the gate: they decide whether LATEST moves, not what is published.
GATE_FIELDS = {"tolerance", "force"}


class ModelNotPromotedError(RunFailure):
    """The new model is worse than the current one: stored, but LATEST was not moved."""


def models_area(name: str) -> str:
    """Folder of a published model's versions, relative to the store root."""
    return f"{PUBLISH.name}/{name}"


USAGE = """from transformers import pipeline
generate = pipeline("text-generation", model="path/to/this/folder")
print(generate("# create scatter plot with x, y\\n")[0]["generated_text"])"""


def model_card(
    store: Store, name: str, sources: dict[str, StageRef], metrics: dict, samples: list[dict]
) -> ModelCard:
    """The published folder's README.md: data, training config, metrics, samples, inputs.

    Built with huggingface_hub's ModelCard; every text from a config, a prompt or the model
    is shown literally (escaped, or inside a fence it cannot close).
    """
    training = read_manifest(store, sources["train"])
    counts = training.counts
    data_counts = [
        (key, value)
        for key, value in {**sources["filter"].counts, **sources["tokenize"].counts}.items()
        if isinstance(value, int)
    ]
    shown_metrics = [
        (k, round(v, 4) if isinstance(v, float) else v)
        for k, v in metrics.items()
        if isinstance(v, int | float | str) or v is None
    ]
    by_library = [
        (name, f"{percent(v.get('accuracy'))} of {v.get('cases')}")
        for name, v in (metrics.get("api_by_library") or {}).items()
    ]
    course = [
        (c.get("name"), f"{'pass' if c.get('passed') else 'fail'}: {c.get('completion')}")
        for c in metrics.get("course_prompts") or []
    ]
    humaneval = (
        f"\nHumanEval (sandboxed): {inline_text(describe_humaneval(metrics['humaneval']))}.\n"
        if metrics.get("humaneval")
        else ""
    )
    sample_text = "\n\n".join(
        code_block(f"{s['prompt']}{s['completion']}", "python") for s in samples
    )
    inputs = [(stage, f"{ref.stage}/{ref.key}") for stage, ref in sources.items()]
    training_line = inline_text(
        f"Training took {counts.get('train_seconds')} s at {counts.get('tokens_per_second')} "
        f"tokens/s ({counts.get('steps')} optimizer steps, {counts.get('tokens')} tokens, "
        f"mixed precision: {counts.get('mixed_precision')})."
    )
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["gpt2", "code", "python", "data-science", "codeparrot-ds"],
    )
    body = f"""
# {inline_text(name)}

A GPT-2 causal language model trained from scratch on Python data-science code
(pandas, scikit-learn, matplotlib, seaborn) by the CodeParrot-DS pipeline.

{code_block(USAGE, "python")}

## Data

{table(data_counts)}

## Training configuration

{code_block(json.dumps(training.params, indent=2, sort_keys=True), "json")}

{training_line}

## Metrics (validation split)

{table(shown_metrics)}

Perplexity is exp(total NLL / predicted tokens) with the plain, unweighted loss, on
`valid_rows_evaluated` of `valid_rows` validation rows; `course_perplexity` is the course's
exp(mean of batch losses).

## Completions

API accuracy@1: at held-out lines that call a data-science API, the greedy next code line
calls the same function (`api_accuracy`, beside `untrained_api_accuracy`). By library:

{table(by_library)}

The course's prompts (pass when the first code lines hold the course's call):

{table(course)}
{humaneval}
## Sample generations (greedy)

{sample_text}

## Built from

{table(inputs)}

Library versions: torch {torch.__version__}, transformers {transformers.__version__},
Python {platform.python_version()}.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def assemble_model_folder(
    store: Store, folder: Path, name: str, sources: dict[str, StageRef], config: PublishConfig
) -> None:
    """Lay out weights, config, tokenizer, generation config and model card in a local folder."""
    shutil.copytree(model_folder(store, sources["train"]), folder, dirs_exist_ok=True)
    shutil.copytree(tokenizer_folder(store, sources["tokenizer"]), folder, dirs_exist_ok=True)
    model_config = json.loads((folder / "config.json").read_text())
    GenerationConfig(
        max_new_tokens=config.max_new_tokens,
        do_sample=False,
        bos_token_id=model_config["bos_token_id"],
        eos_token_id=model_config["eos_token_id"],
        pad_token_id=model_config["eos_token_id"],
    ).save_pretrained(folder)
    evaluation = sources["evaluate"].counts
    metrics = {k: v for k, v in evaluation.items() if k != "samples"}
    card = model_card(store, name, sources, metrics, evaluation["samples"])
    card.save(folder / "README.md")


def check_loads(folder: Path, prompt: str) -> str:
    """Load the folder through ``transformers.pipeline`` and complete a prompt, as a user would."""
    return complete(load_generator(str(folder)), prompt, max_new_tokens=8)


def publish_folder(
    store: Store, sources: dict[str, StageRef], config: PublishConfig, writer: StageWriter, log
) -> dict:
    """Assemble, check and upload the model folder; return what the pipeline reports."""
    with tempfile.TemporaryDirectory(prefix="publish-") as tmp:
        folder = Path(tmp)
        assemble_model_folder(store, folder, config.model_name, sources, config)
        check_loads(folder, "import pandas as pd\n")
        writer.put_dir(folder, "")
    log.info("publish: %s loads through transformers.pipeline", writer.store.uri(writer.prefix))
    evaluation = sources["evaluate"].counts
    return {
        "name": config.model_name,
        "perplexity": evaluation["perplexity"],
        "api_accuracy": evaluation.get("api_accuracy"),
        # Perplexities compare only on the same tokenizer and the same validation rows.
        "tokenizer": sources["tokenizer"].prefix,
        "validation": sources["tokenize"].prefix,
    }


def promotion_refusal(new: dict, current: dict | None, tolerance: float) -> str | None:
    """Why the new model must not replace the current one, or None to promote it.

    API accuracy compares across tokenizers; perplexity only on the same tokenizer and split.
    """
    if not current:
        return None
    new_accuracy, accuracy = new.get("api_accuracy"), current.get("api_accuracy")
    if (
        isinstance(new_accuracy, int | float)
        and isinstance(accuracy, int | float)
        and new_accuracy < accuracy - tolerance
    ):
        return (
            f"not promoted: API accuracy {percent(new_accuracy)} < {percent(accuracy)} of the "
            f"current model (tolerance {100 * tolerance:.1f} points)"
        )
    same_split = all(new.get(k) == current.get(k) for k in ("tokenizer", "validation"))
    new_ppl, ppl = new.get("perplexity"), current.get("perplexity")
    if (
        same_split
        and isinstance(new_ppl, int | float)
        and isinstance(ppl, int | float)
        and new_ppl > ppl * (1 + tolerance)
    ):
        return (
            f"not promoted: validation perplexity {new_ppl:.2f} > {ppl:.2f} of the current "
            f"model on the same tokenizer and split (tolerance {100 * tolerance:.1f}%)"
        )
    return None


def current_model_counts(store: Store, name: str, log) -> dict | None:
    """The figures the quality gate compares against: those of the model LATEST points at.

    They are read from its evaluation's metrics part, checked against that output's manifest,
    and its lineage, never from a file or field that could have been edited unchecked (the
    publish manifest's copy is only compared). None when there is no current model, or it
    cannot be read or checked (then the new model replaces it).
    """
    try:
        current = latest_model(store, name)
        recorded = read_manifest(store, current).counts
        evaluation = input_ref(store, current, "evaluate")
        metrics = json.loads(read_part(store, evaluation, METRICS_PART))
        checked = {
            "api_accuracy": metrics.get("api_accuracy"),
            "perplexity": metrics.get("perplexity"),
            "tokenizer": input_ref(store, current, "tokenizer").prefix,
            "validation": input_ref(store, current, "tokenize").prefix,
        }
    except FileNotFoundError:
        return None
    except (StoreError, ValueError, AttributeError) as err:
        log.warning("the current model cannot be checked (%s); the new model replaces it", err)
        return None
    edited = sorted(k for k, v in checked.items() if recorded.get(k) != v)
    if edited:
        log.warning(
            "the current model's record %s differs from its evaluation in %s; the gate "
            "compares against the evaluation's figures",
            store.uri(current.prefix),
            ", ".join(edited),
        )
    return checked


def set_latest(store: Store, name: str, key: str) -> None:
    """Point ``publish/{name}/LATEST`` at a published version."""
    store.write_json(
        f"{models_area(name)}/{LATEST}",
        {
            "version": key,
            "path": f"{models_area(name)}/{key}",  # relative: the store may move
            "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def latest_model(store: Store, name: str) -> StageRef:
    """The newest published version of a model; a damaged ``LATEST`` is a clear error."""
    rel = f"{models_area(name)}/{LATEST}"
    try:
        latest = store.read_json(rel)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no published model {name!r} in {store.url}: run `codeparrot-ds run` first, "
            "or pass --model with a model folder"
        ) from None
    except DamagedObjectError as err:
        raise StoreError(f"{err}; rerun the pipeline to rewrite it, or pass --model") from None
    version = latest.get("version") if isinstance(latest, dict) else None
    if not isinstance(version, str) or not re.match(KEY_PATTERN, version):
        raise StoreError(
            f"{store.uri(rel)} names no valid version (got {str(version)[:40]!r}); rerun the "
            "pipeline to rewrite it, or pass --model with a model folder"
        )
    return StageRef(stage=models_area(name), key=version)


def published_folder(store: Store, ref: StageRef) -> Path:
    """A local folder holding a published model, every file checked against its manifest."""
    return part_folder(store, ref, "")


def publish_spec(sources: dict[str, StageRef], config: PublishConfig) -> StageSpec:
    """Where the model built from these stage outputs, under this name, is published."""
    params = config.model_dump(mode="json", exclude=GATE_FIELDS)
    return PUBLISH.spec(params, sources, subfolder=config.model_name)
