"""The data stages on Dask: throughput with 1 and 2 workers, a rerun after +5% files, peak
memory per worker as the corpus grows 4x, and a projection to the course's corpus.

The corpus is this machine's Python code: the interpreter's site-packages and standard library
(at least 300 MB). Every run uses a fresh local Dask cluster of its own (so that each worker's
peak memory is that run's) and one tokenizer trained first and then pinned, as the nightly
deployment pins one. Figures are printed beside their baselines; nothing is asserted.

    python bench/data_stages.py [--megabytes 0] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import sysconfig
import tempfile
import time
from pathlib import Path

import dask
import psutil
from distributed import Client, LocalCluster
from prefect_dask import DaskTaskRunner

from flows.cli import prefect_server
from flows.data import SCHEDULER_CONFIG, DataConfig, local_cluster_settings, prepare_data
from tasks.corpus import CORPUS
from tasks.corpus.build import CorpusConfig, default_roots, list_python_files
from tasks.corpus.groups import path_hash
from tasks.filter import FILTER
from tasks.filter.build import FilterConfig
from tasks.tokenize import TOKENIZE
from tasks.tokenize.build import TokenizeConfig
from tasks.tokenizer import TOKENIZER
from tasks.tokenizer.build import TokenizerConfig

COURSE_FILES = 606_720
COURSE_TOKENS = 2.1e9
# Tasks that run in the flow's own process (not mapped over groups); the filter stage's join
# is where near-duplicates are removed across groups.
IN_FLOW_TASKS = (CORPUS.name, FILTER.name, TOKENIZER.name, TOKENIZE.name)
NEW_SHARE = 0.05
WORD = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\b")


def corpus_roots() -> list[str]:
    """site-packages and the standard library."""
    return [*default_roots(), sysconfig.get_paths()["stdlib"]]


def write_new_files(roots: list[str], target: Path, share: float) -> tuple[int, int]:
    """New files, ``share`` of the corpus's: existing ones (a hash-chosen sample) with every
    identifier renamed, so that they are neither exact nor near duplicates. Files, bytes."""
    listing, _ = list_python_files(roots)
    files = size = 0
    for root, path in zip(listing["root"].to_pylist(), listing["path"].to_pylist(), strict=True):
        if path_hash(f"new:{path}") % 1000 >= share * 1000:
            continue
        try:
            text = Path(root, path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        out = target / f"r{files}" / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(WORD.sub(lambda m: m.group(1) + "_nw", text), encoding="utf-8")
        files, size = files + 1, size + out.stat().st_size
    return files, size


def task_seconds(flow_run_id) -> dict[str, float]:
    """Seconds spent in each task (summed over its runs) of a flow run, from Prefect's API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs, page = [], 200  # the API's largest page
    flows = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        while batch := client.read_task_runs(flow_run_filter=flows, limit=page, offset=len(runs)):
            runs += batch
    totals: dict[str, float] = {}
    spans: dict[str, list] = {}
    for run in runs:
        name = run.name.rsplit("-", 1)[0]
        totals[name] = totals.get(name, 0.0) + run.total_run_time.total_seconds()
        if run.start_time and run.end_time:
            span = spans.setdefault(name, [run.start_time, run.end_time])
            span[0], span[1] = min(span[0], run.start_time), max(span[1], run.end_time)
    for name, (start, end) in spans.items():
        totals[f"{name} (wall)"] = (end - start).total_seconds()
    return totals


def kept_file_filter_seconds(store: str, documents, limit: int = 2000) -> float:
    """Seconds per file to filter files that are all kept (as the course's are: it is already
    data-science code), measured in this process on the first kept files of a run."""
    from storage.shards import iter_document_batches
    from storage.stages import StageWriter
    from storage.store import Store
    from tasks.corpus.build import Document
    from tasks.filter.build import filter_documents

    texts = []
    for batch in iter_document_batches(Store(store), documents, "train"):
        texts += batch[: limit - len(texts)]
        if len(texts) >= limit:
            break
    docs = [Document(f"kept/{i}.py", t) for i, t in enumerate(texts)]

    def stream(stats, skip):
        for doc in docs[skip:]:
            stats["seen"] += 1
            stats["read"] += 1
            yield doc

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        filter_documents(
            stream, FilterConfig(), StageWriter(Store(folder), "filter/groups", "0" * 20)
        )
        return (time.perf_counter() - started) / len(docs)


def orchestration_seconds() -> tuple[float, float]:
    """CPU seconds used so far by this process (the flow's engine, the Dask scheduler) and by
    the temporary Prefect server it started: what the workers share the cores with."""
    here = psutil.Process()
    server = [p for p in here.children(recursive=True) if "prefect" in " ".join(p.cmdline())]
    return sum(here.cpu_times()[:2]), sum(sum(p.cpu_times()[:2]) for p in server)


def run(config: DataConfig, store: str, workers: int) -> dict:
    """One data-flow run on a fresh local cluster: wall time, task seconds, worker peaks."""
    settings = local_cluster_settings(workers)
    with (
        dask.config.set(SCHEDULER_CONFIG),
        LocalCluster(**settings) as cluster,
        Client(cluster) as client,
    ):
        started, cpu = time.perf_counter(), orchestration_seconds()
        state = prepare_data.with_options(
            task_runner=DaskTaskRunner(address=cluster.scheduler_address)
        )(config, store, return_state=True)
        wall = time.perf_counter() - started
        flow_cpu, server_cpu = (b - a for a, b in zip(cpu, orchestration_seconds(), strict=True))
        peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    result = state.result()
    task_times = task_seconds(state.state_details.flow_run_id)
    print(
        f"    {workers} worker(s): {wall:.1f} s; task seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(task_times.items())),
        flush=True,
    )
    return {
        "wall": wall,
        "result": result,
        "tasks": task_times,
        "peak_mib": [kib / 1024 for kib in peaks.values()],
        "orchestration": flow_cpu + server_cpu,
        "flow_cpu": flow_cpu,
    }


def data_config(
    roots: list[str], tokenizer: str | None, max_bytes: int | None, group_files: int
) -> DataConfig:
    """The default settings (a packed 128-token context) on these roots."""
    return DataConfig(
        corpus=CorpusConfig(roots=roots, max_bytes=max_bytes, group_files=group_files),
        filter=FilterConfig(valid_fraction=0.05),
        tokenizer=TokenizerConfig(vocab_size=8192, pretrained=tokenizer),
        tokenize=TokenizeConfig(mode="packed"),
    )


def mapped_seconds(figures: dict) -> float:
    """Wall time of the two mapped phases: first filter task start to last filter task end,
    and the same for tokenize."""
    tasks = figures["tasks"]
    return sum(tasks.get(f"{s.group_task_name} (wall)", 0.0) for s in (FILTER, TOKENIZE))


def speedup(one: dict, many: dict) -> float:
    """How many times faster the mapped phases ran in ``many`` than in ``one``."""
    return mapped_seconds(one) / max(mapped_seconds(many), 1e-9)


def describe(name: str, figures: dict, megabytes: float, baseline: dict | None = None) -> str:
    """Two lines: the data flow's wall time and the mapped phases' (filter + tokenize), each
    with its throughput over the corpus read and its ratio to the baseline's."""
    groups = figures["result"]["groups"]
    lines = [
        f"  {name:<26} data flow {figures['wall']:6.1f} s {megabytes / figures['wall']:6.2f} "
        f"MB/s; groups filtered {groups['filtered']}/{groups['groups']}, tokenized "
        f"{groups['tokenized']}/{groups['groups']}",
        f"  {'':<26} filter + tokenize {mapped_seconds(figures):6.1f} s "
        f"{megabytes / max(mapped_seconds(figures), 1e-9):6.2f} MB/s",
    ]
    lines[0] += f"; flow process + Prefect server {figures['orchestration']:.1f} CPU-s"
    if baseline:
        lines[0] += f"  {baseline['wall'] / figures['wall']:5.2f}x the baseline's speed"
        lines[1] += f"  {speedup(baseline, figures):5.2f}x the baseline's speed"
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=0, help="corpus size; 0: all of it")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--group-files", type=int, default=CorpusConfig().group_files, help="files per group"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="pairs of 1- and N-worker runs (median reported)"
    )
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    roots = corpus_roots()
    listing, _ = list_python_files(roots)
    total = sum(listing["size"].to_pylist())
    limit = int(args.megabytes * 1e6) if args.megabytes else None
    megabytes = min(total, limit or total) / 1e6
    print(f"corpus: {listing.num_rows:,} files, {total / 1e6:.1f} MB under {roots}")
    print(f"read: {megabytes:.1f} MB; each run on a fresh local cluster, 1 thread per worker")
    try:
        with prefect_server():
            tokenizer_run = run(
                data_config(roots, None, limit, args.group_files), str(work / "tokenizer"), 2
            )
            tokenizer_ref = tokenizer_run["result"]["tokenizer"]
            pinned = f"file://{work / 'tokenizer'}/{tokenizer_ref.prefix}/tokenizer"
            print(
                f"tokenizer trained in {tokenizer_run['tasks'].get(TOKENIZER.name, 0):.1f} s"
                f" ({tokenizer_ref.counts['vocab_size']:,} tokens), then pinned: {pinned}"
            )
            config = data_config(roots, pinned, limit, args.group_files)
            # 1 and N workers in turn, each run on a fresh store; the pair with the median
            # speedup is reported (the runs vary by a few percent on a shared machine).
            pairs = [
                (
                    run(config, str(work / f"one{i}"), 1),
                    run(config, str(work / f"many{i}"), args.workers),
                )
                for i in range(args.repeats)
            ]
            ranked = sorted(range(args.repeats), key=lambda i: speedup(*pairs[i]))
            median = ranked[len(ranked) // 2]
            one, many = pairs[median]
            per_kept_file = kept_file_filter_seconds(
                str(work / f"one{median}"), one["result"]["filter"]
            )
            quarter = run(
                data_config(roots, pinned, int(megabytes * 1e6 / 4), args.group_files),
                str(work / "quarter"),
                args.workers,
            )
            new_files, new_bytes = write_new_files(roots, work / "new", NEW_SHARE)
            grown = config.model_copy(deep=True)
            grown.corpus.roots = [*roots, str(work / "new")]
            rerun = run(grown, str(work / f"many{median}"), args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nspeedup of filter + tokenize, {args.workers} workers against 1, in each of "
        f"{args.repeats} pair(s) of runs: "
        + ", ".join(f"{speedup(*pair):.2f}x" for pair in pairs)
        + " (the median pair below)"
    )
    print("\nthroughput (whole data flow: snapshot, filter, dedup, tokenize, join):")
    print(describe("1 worker (baseline)", one, megabytes))
    print(describe(f"{args.workers} workers", many, megabytes, one))
    print(
        f"\nrerun after +{NEW_SHARE:.0%} files ({new_files:,} files, {new_bytes / 1e6:.1f} MB, "
        f"identifiers renamed), {args.workers} workers, same store:"
    )
    print(describe("first run (baseline)", many, megabytes))
    print(
        describe("rerun", rerun, megabytes + new_bytes / 1e6)
        + f"\n  the rerun's data flow took {rerun['wall'] / many['wall']:.1%} of the first run's"
    )
    if limit:
        print("  (with --megabytes the new files enter the limit's sample and displace others,")
        print("  so most groups change: run without it for the rerun figure)")
    print(f"\npeak memory per worker (MiB), {args.workers} workers:")
    print(
        f"  corpus 1/4 ({megabytes / 4:.0f} MB, baseline): "
        + ", ".join(f"{p:.0f}" for p in quarter["peak_mib"])
    )
    print(
        f"  corpus 4x  ({megabytes:.0f} MB):           "
        + ", ".join(f"{p:.0f}" for p in many["peak_mib"])
        + f"  ({max(many['peak_mib']) / max(quarter['peak_mib']):.2f}x the baseline's peak)"
    )

    # Projection from the 1-worker run's per-task seconds.
    counts = one["result"]["tokenize"].counts
    tokenize_s = one["tasks"].get(TOKENIZE.group_task_name, 0.0)
    dedup_s = one["tasks"].get(FILTER.name, 0.0)
    files = one["result"]["corpus"].counts["files"]
    tokens = counts["train_tokens"] + counts["valid_tokens"]
    kept = one["result"]["filter"].counts["kept"]
    per_file = one["tasks"].get(FILTER.group_task_name, 0.0) / files
    per_token = tokenize_s / tokens
    per_kept = dedup_s / kept
    efficiency = one["wall"] / many["wall"] / args.workers
    serial = COURSE_FILES * per_kept  # the dedup join runs in the flow's process
    # The flow's process submits each group's task (Prefect serialises its context, Dask
    # hashes and pickles it): the CPU it spent beyond its own tasks, per group task. Here it
    # also hosts the Dask scheduler, so this is an upper bound.
    groups = one["result"]["groups"]
    in_flow = sum(one["tasks"].get(name, 0.0) for name in IN_FLOW_TASKS)
    group_tasks = max(groups["filtered"] + groups["tokenized"], 1)
    per_task = max(one["flow_cpu"] - in_flow, 0.0) / group_tasks
    course_groups = -(-COURSE_FILES // args.group_files)
    submit_s = course_groups * per_task
    phases = (COURSE_FILES * per_kept_file, COURSE_TOKENS * per_token)
    print(
        f"\nper-file costs: {per_file * 1e3:.2f} ms to filter a file of this corpus "
        f"({kept:,} of {files:,} kept), {per_kept_file * 1e3:.2f} ms to filter a file that "
        f"is kept (read, MinHash, index, shard), {per_token * 1e6:.2f} us to tokenize a "
        f"token, {per_kept * 1e3:.3f} ms of dedup join per kept file; {args.workers}-worker "
        f"efficiency {efficiency:.0%}; {per_task * 1e3:.0f} ms of the flow process's CPU to "
        f"submit a group's task ({course_groups:,} groups of {args.group_files:,} files: "
        f"{submit_s:.0f} s a phase)"
    )
    print(
        "projection to the course's corpus (606,720 files, 2.1B tokens; every file is "
        "data-science code, so each is kept, indexed and tokenized; the join runs once; a "
        "phase ends no sooner than its last task is submitted):"
    )
    for name, workers in (("1 core", 1), ("16-core machine", 16), ("4 machines x 16 cores", 64)):
        share = workers * (efficiency if workers > 1 else 1)
        seconds = sum(max(work / share, submit_s) for work in phases) + serial
        bound = [
            n
            for n, work in zip(("filter", "tokenize"), phases, strict=True)
            if work / share < submit_s
        ]
        note = f"  ({' and '.join(bound)} bound by submitting its tasks)" if bound else ""
        print(f"  {name:<24} {seconds / 3600:6.2f} h{note}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "one": one["wall"],
                    "many": many["wall"],
                    "rerun": rerun["wall"],
                    "peaks_quarter": quarter["peak_mib"],
                    "peaks_full": many["peak_mib"],
                    "mapped_one": mapped_seconds(one),
                    "mapped_many": mapped_seconds(many),
                    "tokenizer_seconds": tokenizer_run["tasks"].get(TOKENIZER.name, 0.0),
                    "per_token_us": per_token * 1e6,
                }
            )
        )


if __name__ == "__main__":
    main()
