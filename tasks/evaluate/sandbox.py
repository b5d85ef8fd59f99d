"""Running untrusted generated code: a subprocess with no network, limits and a scratch folder.

The child is a fresh ``python -I`` (isolated: no environment variables, no user site, not the
current folder on the path). Before it runs the program it leaves the network (its own empty
network namespace), drops root to ``nobody`` (so host files are out of reach, and nobody's
process count bounds a fork bomb), and sets limits on address space, CPU time, file size and
open files. The parent kills the whole process group at the wall-clock timeout. The program
runs in a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from storage.errors import UserError

# The child's exit status when it could not isolate itself: it then runs nothing.
NO_SANDBOX_STATUS = 97
NOBODY = 65534

# Run by the child before the program. It reads the program from stdin and the limits from
# argv; it imports only the standard library, and what the program imports.
_HARNESS = r"""
import ast, ctypes, importlib, os, resource, sys
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
memory, cpu_seconds, file_bytes = (int(v) for v in sys.argv[1:4])
libc = ctypes.CDLL(None, use_errno=True)
root = os.geteuid() == 0
if libc.unshare(CLONE_NEWNET if root else CLONE_NEWUSER | CLONE_NEWNET) != 0:
    errno = ctypes.get_errno()
    sys.stderr.write("sandbox: cannot leave the network (unshare errno {})\n".format(errno))
    os._exit(NO_SANDBOX_STATUS)
program = sys.stdin.read()
try:
    tree = ast.parse(program)
except SyntaxError as err:
    sys.exit("generated code does not parse: {}".format(err))
# Imports are resolved before root is dropped: the interpreter's library may lie in a folder
# that nobody cannot read (the codec socket functions load lazily, too). Only installed modules
# can be found (-I: no cwd, no user site).
import encodings.idna
for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names = [node.module] + [node.module + "." + alias.name for alias in node.names]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            pass
if root:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    # nobody runs nothing else here, so this bounds the program's own processes: no fork bomb.
    resource.setrlimit(resource.RLIMIT_NPROC, (32, 32))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
del ctypes, libc, resource
exec(compile(tree, "<generated>", "exec"), {"__name__": "__main__"})
""".replace("NO_SANDBOX_STATUS", str(NO_SANDBOX_STATUS)).replace("NOBODY", str(NOBODY))


class SandboxError(UserError, RuntimeError):
    """This machine cannot isolate generated code, so none is run."""


@dataclass(frozen=True)
class Limits:
    """What a sandboxed program may use."""

    timeout_s: float = 5.0
    memory_mb: int = 512
    file_mb: int = 16


@dataclass(frozen=True)
class Outcome:
    """How a sandboxed program ended."""

    reason: str  # "passed", "failed" (non-zero exit), or "timeout"

    @property
    def passed(self) -> bool:
        """Whether the program exited 0 within the timeout."""
        return self.reason == "passed"


def run_sandboxed(program: str, limits: Limits) -> Outcome:
    """Run ``program`` in a sandboxed child; it passes when it exits 0 within the timeout.

    Raises ``SandboxError`` when the child cannot leave the network, and so runs nothing.
    """
    # stderr goes to a file, which the child's file-size limit bounds; a pipe would let a
    # program fill this process's memory.
    with tempfile.TemporaryDirectory(prefix="sandbox-") as scratch, tempfile.TemporaryFile() as err:
        if os.geteuid() == 0:
            os.chown(scratch, NOBODY, NOBODY)
        argv = [
            sys.executable,
            "-I",
            "-c",
            _HARNESS,
            str(limits.memory_mb << 20),
            str(max(1, int(limits.timeout_s) + 1)),
            str(limits.file_mb << 20),
        ]
        child = subprocess.Popen(
            argv,
            cwd=scratch,
            env={"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch},
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        try:
            child.communicate(program.encode("utf-8", "replace"), limits.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        # The program may have left children behind; they die with its process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        err.seek(0)
        message = err.read(4096).decode("utf-8", "replace")
    if timed_out:
        return Outcome("timeout")
    if child.returncode == NO_SANDBOX_STATUS and message.startswith("sandbox:"):
        raise SandboxError(
            f"{message.strip()}; generated code runs only without network, so run the "
            "HumanEval evaluation where user or network namespaces are allowed (e.g. sysctl "
            "kernel.unprivileged_userns_clone=1) or turn it off"
        )
    return Outcome("passed" if child.returncode == 0 else "failed")
