"""The ``codeparrot-ds`` command: run the pipeline, or generate code with a published model."""

from __future__ import annotations

import argparse
import json
import sys
import time

from storage.store import DEFAULT_STORE_URL, STORE_URL_ENV, default_store_url

EXIT_USAGE = 2
EXIT_FAILURE = 1


def cmd_run(args: argparse.Namespace) -> int:
    """Run the whole pipeline and print where the model went and how good it is."""
    from flows.config import build_config
    from flows.pipeline import codeparrot_pipeline

    config = build_config(args.preset, args.config, args.set or [])
    if args.print_config:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        return 0
    started = time.perf_counter()
    result = codeparrot_pipeline(
        config=config, store_url=args.store, training_deployment=args.training_deployment
    )
    elapsed = time.perf_counter() - started
    print()
    print(f"model:       {result['model_uri']}")
    print(
        f"perplexity:  {result['perplexity']:.2f} on the validation split "
        f"(untrained model: {result['untrained_perplexity']:.2f})"
    )
    print(f"prompt:      {result['scatter_prompt']!r}")
    print(f"completion:  {result['scatter_completion']!r}")
    print(f"wall time:   {elapsed:.1f} s")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Complete a prompt with a published model (the newest in the store unless --model)."""
    from storage.store import Store, fetch_folder
    from tasks.generation import complete, load_generator
    from tasks.publish import latest_model, published_folder

    if args.model:
        model = str(fetch_folder(args.model)) if "://" in args.model else args.model
    else:
        model = str(published_folder(latest_model(Store(args.store), args.name)))
    prompt = args.prompt if args.prompt.endswith("\n") else args.prompt + "\n"
    completion = complete(load_generator(model), prompt, args.max_new_tokens, args.temperature)
    print(prompt + completion)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="codeparrot-ds",
        description="Train GPT-2 from scratch on Python data-science code, with Prefect.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole pipeline (finished stages are skipped)")
    run.add_argument("--preset", help="named preset: smoke (CPU, minutes) or course (GPU, 124M)")
    run.add_argument(
        "--config", help="YAML/JSON/TOML file of stage settings, applied after the preset"
    )
    run.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override one setting, e.g. --set train.max_steps=100 (repeatable)",
    )
    run.add_argument(
        "--store",
        default=default_store_url(),
        help=f"store URL: a folder, file:///path or s3://bucket/prefix "
        f"(default ${STORE_URL_ENV} or ./{DEFAULT_STORE_URL})",
    )
    run.add_argument(
        "--training-deployment",
        metavar="FLOW/DEPLOYMENT",
        help="train on this deployment's workers, e.g. codeparrot-ds-train/gpu (needs a "
        "Prefect server with the deployments and a store both machines reach)",
    )
    run.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    run.set_defaults(func=cmd_run)

    gen = sub.add_parser("generate", help="complete a prompt with a published model")
    gen.add_argument("prompt", help='e.g. "# create scatter plot with x, y"')
    gen.add_argument("--model", help="model folder or URL (default: LATEST in the store)")
    gen.add_argument("--store", default=default_store_url(), help="store URL to find LATEST in")
    gen.add_argument("--name", default="codeparrot-ds", help="published model name in the store")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    gen.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``codeparrot-ds``; user errors print one clear message and exit 2."""
    from flows.config import ConfigError
    from storage.store import StoreError, StoreUnavailableError
    from tasks.corpus import CorpusError
    from tasks.filtering import FilterError
    from tasks.generation import PromptTooLongError
    from tasks.tokenizer import TokenizerError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (
        ConfigError,
        StoreError,
        CorpusError,
        FilterError,
        TokenizerError,
        FileNotFoundError,
        PromptTooLongError,
    ) as err:
        print(f"codeparrot-ds: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except StoreUnavailableError as err:
        # Not the user's input: the run may be retried as it is once the store is back.
        print(f"codeparrot-ds: error: {err}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
