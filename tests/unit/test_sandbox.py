"""Generated code runs sandboxed: no network, bounded time and memory, no host files; and
HumanEval is scored by running each completed problem there."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from tasks.evaluate.humaneval import check_program, load_problems, truncate_completion
from tasks.evaluate.sandbox import Limits, run_sandboxed

LIMITS = Limits(timeout_s=3.0, memory_mb=256)


def test_a_program_passes_when_it_exits_zero():
    assert run_sandboxed("assert sum([1, 2]) == 3\n", LIMITS).passed
    assert run_sandboxed("assert sum([1, 2]) == 4\n", LIMITS).reason == "failed"
    assert run_sandboxed("def f(:\n    pass\n", LIMITS).reason == "failed"


def test_the_network_is_out_of_reach():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    reach = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
    try:
        # The same program reaches the listener from here (so the check is real) ...
        exec(reach, {})
        # ... and not from the sandbox.
        assert run_sandboxed(reach, LIMITS).reason == "failed"
        refused = f"import socket\ntry:\n    {reach.splitlines()[1]}\nexcept OSError:\n    pass\n"
        assert run_sandboxed(refused, LIMITS).passed
    finally:
        listener.close()


def test_a_program_that_runs_forever_is_killed_at_the_timeout():
    start = time.monotonic()
    outcome = run_sandboxed("while True:\n    pass\n", Limits(timeout_s=1.0))
    assert outcome.reason == "timeout"
    assert time.monotonic() - start < 10


def test_a_program_that_forks_a_sleeper_does_not_outlive_the_timeout(tmp_path):
    program = "import os, time\nif os.fork() == 0:\n    time.sleep(60)\ntime.sleep(60)\n"
    assert run_sandboxed(program, Limits(timeout_s=1.0)).reason == "timeout"


def test_a_fork_bomb_is_bounded():
    if os.geteuid() != 0:
        pytest.skip("the process limit applies where the sandbox runs code as nobody")
    program = (
        "import os, time\n"
        "children = 0\n"
        "for _ in range(200):\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    children += 1\n"
    )
    # The 33rd fork fails, so the program fails long before its 200 children exist.
    assert run_sandboxed(program, Limits(timeout_s=5.0)).reason == "failed"


def test_memory_is_limited():
    assert run_sandboxed("block = bytearray(1 << 30)\n", LIMITS).reason == "failed"
    assert run_sandboxed("block = bytearray(1 << 20)\n", LIMITS).passed


def test_it_works_in_a_scratch_folder_and_cannot_write_host_files(tmp_path):
    assert run_sandboxed("open('scratch.txt', 'w').write('ok')\n", LIMITS).passed
    target = tmp_path / "host.txt"
    tmp_path.chmod(0o755)
    # The host's folders are not in the program's root, even one it could write to.
    assert run_sandboxed(f"open({str(target)!r}, 'w').write('x')\n", LIMITS).reason == "failed"
    assert not target.exists()


PROJECT_FILE = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_program_sees_no_host_files_and_its_imports_run_unprivileged():
    assert PROJECT_FILE.stat().st_mode & 0o004  # a file that anyone may read on the host
    # Nothing of the program is imported before it runs: its imports run unprivileged.
    late_import = "import sys\nsys.exit(1 if 'decimal' in sys.modules else 0)\nimport decimal\n"
    assert run_sandboxed(late_import, LIMITS).passed
    user = 65534 if os.geteuid() == 0 else os.geteuid()  # root's code runs as nobody
    assert run_sandboxed(f"import os, sys\nsys.exit(os.geteuid() != {user})\n", LIMITS).passed
    # No capability is left to leave its root by another chroot.
    escape = "import os, sys\nos.mkdir('e')\nos.chroot('e')\n"
    assert run_sandboxed(escape, LIMITS).reason == "failed"
    looks = f"import os, sys\nsys.exit(os.path.exists({str(PROJECT_FILE)!r}))\n"
    assert run_sandboxed(looks, LIMITS).passed
    # The standard library and the installed packages are there, read-only.
    uses = "import json, packaging.version\nopen(json.__file__, 'a')\n"
    assert run_sandboxed(uses.replace("open(json.__file__, 'a')\n", ""), LIMITS).passed
    assert run_sandboxed(uses, LIMITS).reason == "failed"


def test_its_scratch_and_shared_memory_files_are_gone_when_it_ends():
    names = [f"/tmp/sandbox-test-{uuid.uuid4().hex}", f"/dev/shm/sandbox-test-{uuid.uuid4().hex}"]
    program = "".join(f"open({name!r}, 'w').write('x')\n" for name in names)
    assert run_sandboxed(program, LIMITS).passed
    assert not any(Path(name).exists() for name in names)


def test_humaneval_canonical_solutions_pass_and_wrong_bodies_fail():
    problems = load_problems(3)
    assert [p["task_id"] for p in problems] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    for problem in problems:
        solution = check_program(problem, problem["canonical_solution"])
        assert run_sandboxed(solution, LIMITS).passed, problem["task_id"]
        assert not run_sandboxed(check_program(problem, "    return None\n"), LIMITS).passed


@pytest.mark.parametrize(
    ("completion", "body"),
    [
        ("    return 1\n\ndef other():\n    pass\n", "    return 1\n"),
        ("    return 1\n# a comment\nprint(2)\n", "    return 1"),
        ("    x = 1\n    if x:\n        return x\nif __name__ == '__main__':\n", None),
        ("    return 1", "    return 1"),
    ],
)
def test_a_completion_ends_where_a_new_top_level_statement_starts(completion, body):
    expected = body if body is not None else completion.split("\nif __name__")[0]
    assert truncate_completion(completion) == expected
