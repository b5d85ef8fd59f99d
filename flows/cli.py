"""The ``codeparrot-ds`` command: run the pipeline, or generate code with a published model."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from storage.errors import RunFailure
from storage.store import DEFAULT_STORE_URL, STORE_URL_ENV, default_store_url

EXIT_USAGE = 2
EXIT_FAILURE = 1
# How long a run waits for its temporary Prefect server to answer, at the least.
SERVER_START_S = 180
# How long a run's last logs and events may take to reach the temporary server before it stops.
DRAIN_S = 30


class ServerStartError(RunFailure):
    """The temporary Prefect server of a plain run did not start in time."""


@contextlib.contextmanager
def prefect_server() -> Iterator[None]:
    """The Prefect server for this command: the configured one, or a temporary local one.

    The temporary server is Prefect's own, started in a session of its own: a Ctrl-C, which a
    terminal sends to the whole process group, or a SIGTERM to the group (``timeout``, a
    service manager) then reaches only this process, which records the run's end while the
    server still answers. The server stops when this command does, in that order: the run's
    logs and events are sent (for at most ``DRAIN_S``), then the server is stopped and reaped.
    It also gets SIGTERM when this process dies otherwise (SIGKILL), so it is never orphaned.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    if PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    # The server inherits this environment: it must not try to reach anything off this
    # host, so its analytics are off unless the user asked for them.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = SubprocessASGIServer()
    # Prefect's 20 s default is missed on a loaded machine; a larger setting is kept.
    timeout = max(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(), SERVER_START_S)
    try:
        with _children_detached():
            server.start(timeout=timeout)  # registers its own stop at exit, a no-op after ours
    except RuntimeError as err:
        server.stop()
        raise ServerStartError(
            f"the temporary Prefect server did not answer within {timeout} s ({err}); the "
            "machine may be overloaded: set PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS "
            "higher, or point PREFECT_API_URL at a running server"
        ) from None
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
    finally:
        drain_prefect_workers(DRAIN_S)
        server.stop()  # SIGTERM, then SIGKILL after 5 s; reaped either way


def _detach_and_die_with_parent() -> None:
    """In a child, before it runs: a session of its own, and SIGTERM when its parent dies."""
    os.setsid()
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


@contextlib.contextmanager
def _children_detached() -> Iterator[None]:
    """Processes started meanwhile (Prefect's server, which takes no such option) are detached
    and die with this one."""
    original = subprocess.Popen
    subprocess.Popen = functools.partial(original, preexec_fn=_detach_and_die_with_parent)
    try:
        yield
    finally:
        subprocess.Popen = original


def drain_prefect_workers(timeout: float) -> None:
    """Send what Prefect's log and event workers still hold, waiting at most ``timeout``
    seconds for each; what is left then is abandoned."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=timeout, at_exit=False)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the whole pipeline and print where the model went and how good it is."""
    from flows.config import CUSTOM, build_config
    from flows.pipeline import codeparrot_pipeline
    from tasks.completions import first_code_line, percent
    from tasks.evaluate.humaneval import describe as describe_humaneval

    config = build_config(args.preset, args.config, args.set or [])
    if args.print_config:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        return 0
    started = time.perf_counter()
    with prefect_server():
        result = codeparrot_pipeline(
            preset=CUSTOM,
            config=config,
            store_url=args.store,
            training_deployment=args.training_deployment,
            dask_address=args.dask_address,
        )
    elapsed = time.perf_counter() - started
    print()
    print(f"model:       {result['model_uri']}")
    print(
        f"perplexity:  {result['perplexity']:.2f} on {result['valid_rows_evaluated']:,} of "
        f"{result['valid_rows']:,} validation rows "
        f"(untrained model: {result['untrained_perplexity']:.2f})"
    )
    print(
        f"API acc@1:   {percent(result['api_accuracy'])} of {result['api_cases']} held-out "
        f"data-science calls (untrained model: {percent(result['untrained_api_accuracy'])})"
    )
    course = result["course_prompts"]
    print(f"course:      {sum(c['passed'] for c in course)} of {len(course)} prompts passed")
    for case in course:
        line = first_code_line(case["completion"]).strip()
        print(f"  {'pass' if case['passed'] else 'FAIL'}  {case['name']}: {line[:70]!r}")
    if result["humaneval"]:
        print(f"HumanEval:   {describe_humaneval(result['humaneval'])}")
    print(f"wall time:   {elapsed:.1f} s")
    return 0


def _open_store(url: str):
    """The store at ``url``, with S3 credentials from a Prefect block when one is named."""
    from tasks.running import open_store

    return open_store(url)


def resolve_model(model: str | None, store_url: str, name: str) -> str:
    """The folder (or Hub name) to load: ``--model`` as given, else LATEST in the store.

    A local-looking ``--model`` must be a model folder; it is never looked up on the Hub.
    """
    from storage.store import fetch_folder
    from tasks.evaluate.generation import ModelLoadError
    from tasks.publish.build import latest_model, published_folder
    from tasks.tokenizer.build import is_local_name

    if not model:
        store = _open_store(store_url)
        return str(published_folder(store, latest_model(store, name)))
    if "://" in model:
        return str(fetch_folder(model, _open_store(model).credentials))
    if is_local_name(model):
        folder = Path(model).expanduser()
        if not (folder / "config.json").is_file():
            what = "does not exist" if not folder.exists() else "holds no model (no config.json)"
            raise ModelLoadError(
                f"--model {model}: {what}; give the folder of a published model, e.g. "
                "codeparrot-store/publish/codeparrot-ds/<version>"
            )
        return str(folder)
    return model


def cmd_generate(args: argparse.Namespace) -> int:
    """Complete a prompt with a published model (the newest in the store unless --model)."""
    from tasks.evaluate.generation import complete, load_generator

    model = resolve_model(args.model, args.store, args.name)
    prompt = args.prompt if args.prompt.endswith("\n") else args.prompt + "\n"
    completion = complete(load_generator(model), prompt, args.max_new_tokens, args.temperature)
    print(prompt + completion)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every committed output of the store against its manifest; list what is damaged."""
    from storage.verify import repair, verify_store

    store = _open_store(args.store)
    report = verify_store(store)
    print(
        f"checked {report.outputs} committed outputs, {report.parts} parts, "
        f"{report.bytes:,} bytes hashed in {store.url}"
    )
    for damage in report.damage:
        print(f"DAMAGED {store.uri(damage.output)}/{damage.name}: {damage.problem}")
    if not report.damage:
        print("no damage found")
        return 0
    if not args.repair:
        print(
            f"{len(report.damage)} problem(s); run again with --repair to uncommit the damaged "
            "outputs, so that the next run rebuilds them"
        )
        return EXIT_FAILURE
    for rel in repair(store, report.damage):
        print(f"removed {store.uri(rel)}")
    print("repaired: the next run rebuilds what was uncommitted")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="codeparrot-ds",
        description="Train GPT-2 from scratch on Python data-science code, with Prefect.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole pipeline (finished stages are skipped)")
    run.add_argument(
        "--preset",
        default="smoke",
        help="the settings to start from: smoke (CPU, minutes; the default), ds (data-science "
        "packages' usage code, CPU, under 30 minutes), course (GPU, 124M) or custom (the "
        "defaults, which are the course's 124M model, for a --config file)",
    )
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
        "Prefect server with the deployments and a store both machines reach), or 'local' "
        "(default: $CODEPARROT_TRAINING_DEPLOYMENT, else local)",
    )
    run.add_argument(
        "--dask-address",
        metavar="ADDRESS",
        help="filter and tokenize the corpus's groups on the Dask cluster whose scheduler is "
        "here (tcp://host:port), or 'none' for this process only (default: "
        "$CODEPARROT_DASK_ADDRESS, else a local cluster of one worker per core)",
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

    verify = sub.add_parser(
        "verify", help="check every committed output in the store against its manifest"
    )
    verify.add_argument("--store", default=default_store_url(), help="store URL to check")
    verify.add_argument(
        "--repair",
        action="store_true",
        help="uncommit damaged outputs (remove their manifests) so the next run rebuilds them",
    )
    verify.set_defaults(func=cmd_verify)
    return parser


def _exit_on_sigterm(signum, frame) -> None:
    # SIGTERM's default ends Python at once, skipping atexit, and the temporary Prefect server
    # that a plain run starts would be orphaned; unwinding stops it (and launched trainers).
    raise SystemExit(128 + signum)


def _exit_now(code: int) -> None:
    """End at once, skipping Prefect's at-exit drains: after a signal, the run's logs were
    sent (or abandoned) before its server stopped, and a drain now could wait on a server
    that is gone."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``codeparrot-ds``; user errors print one clear message and exit 2."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    from flows.failures import RUN_ERRORS, USER_ERRORS

    try:
        # Inside: the parser's defaults read the settings, and a bad variable is one line too.
        args = build_parser().parse_args(argv)
        return args.func(args)
    except SystemExit as stop:
        if stop.code == 128 + signal.SIGTERM and argv is None:  # the command, not a test's call
            _exit_now(stop.code)
        raise
    except (*USER_ERRORS, FileNotFoundError) as err:
        print(f"codeparrot-ds: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except RUN_ERRORS as err:
        # Not the user's input: retrying later, or fixing what its message names, may help.
        print(f"codeparrot-ds: error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("codeparrot-ds: interrupted", file=sys.stderr)
        if argv is None:
            _exit_now(128 + signal.SIGINT)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
