"""Running untrusted generated code: a subprocess with no network, limits and a scratch folder.

The child is a fresh ``python -I`` (isolated: no environment variables, no user site, not the
current folder on the path). Before it runs the program it leaves the network (its own empty
network namespace) and sets limits on address space, CPU time, file size and open files. The
parent kills the whole process group at the wall-clock timeout.

It also leaves the host's mounts: it builds a root of its own on a small tmpfs, with read-only
binds of the system folders and the interpreter's (so neither the store, published models, home
folders nor the project are there), a ``/tmp`` and ``/dev/shm`` on that tmpfs (gone when the
program ends), and ``chroot``s into it. Run as root, it then drops to ``nobody`` (no capability
left to leave it; nobody's process count bounds a fork bomb). Run as another user, it does all
this in a user namespace of its own, as that same user, and then gives up the namespace's
capabilities, so it cannot leave the root either. Only then is the program read and run, so
the modules it imports run unprivileged too.
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
# What the program's root holds, read-only (besides the interpreter's own prefixes); a path
# the machine lacks is left out, and a link is copied as a link.
SYSTEM_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")

# Run by the child before the program. It reads the limits from argv and the program from
# stdin; it imports only the standard library, and what the program imports.
_HARNESS = r"""
import ctypes, os, resource, sys
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x20000, 0x10000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 32, 4096, 16384, 1 << 18)
memory, cpu_seconds, file_bytes = (int(v) for v in sys.argv[1:4])
libc = ctypes.CDLL(None, use_errno=True)

def refuse(what):
    sys.stderr.write("sandbox: cannot {} (errno {})\n".format(what, ctypes.get_errno()))
    os._exit(NO_SANDBOX_STATUS)

def mount(source, target, fstype, flags, data):
    args = [None if v is None else v.encode() for v in (source, target, fstype, data)]
    if libc.mount(args[0], args[1], args[2], flags, args[3]) != 0:
        refuse("mount {}".format(target))

def own_root(new):
    # Every folder on the path to a bind is this tmpfs's, so nobody can walk to it.
    mount("sandbox", new, "tmpfs", MS_NOSUID | MS_NODEV,
          "size={},nr_inodes=4096,mode=755".format(4 * file_bytes))
    prefixes = [p for p in {sys.base_prefix, sys.prefix} if p not in ("", "/")]
    binds = sorted(p for p in (*SYSTEM_FOLDERS, *prefixes) if os.path.lexists(p))
    for path in binds:
        if any(path.startswith(other + "/") for other in binds):
            continue
        target = new + path
        if os.path.islink(path):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.readlink(path), target)
            continue
        os.makedirs(target, exist_ok=True)
        mount(path, target, None, MS_BIND | MS_REC, None)
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    os.makedirs(new + "/dev", exist_ok=True)
    for device in DEVICES:
        if os.path.exists(device):
            open(new + device, "w").close()
            mount(device, new + device, None, MS_BIND, None)
    for scratch in ("/tmp", "/dev/shm"):
        os.makedirs(new + scratch, exist_ok=True)
        os.chmod(new + scratch, 0o1777)
    os.chroot(new)
    os.chdir("/tmp")
    os.environ["HOME"] = os.environ["TMPDIR"] = "/tmp"

def drop_capabilities():
    # A user namespace's creator holds every capability in it; none is needed past chroot.
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]
    if libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()) != 0:
        refuse("give up the namespace's capabilities (capset)")

def write(path, text):
    with open(path, "w") as file:
        file.write(text)

if os.geteuid() == 0:
    if libc.unshare(CLONE_NEWNS | CLONE_NEWNET) != 0:
        refuse("leave the network and the host's mounts (unshare)")
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)  # nothing here reaches the host
    own_root(os.getcwd())
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    # nobody runs nothing else here, so this bounds the program's own processes: no fork bomb.
    resource.setrlimit(resource.RLIMIT_NPROC, (32, 32))
else:
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET) != 0:
        refuse("leave the network and the host's mounts (unshare)")
    try:  # the same user inside, so files it makes are its own
        write("/proc/self/setgroups", "deny")
        write("/proc/self/uid_map", "{} {} 1".format(uid, uid))
        write("/proc/self/gid_map", "{} {} 1".format(gid, gid))
    except OSError:
        refuse("map its user into its namespace")
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    own_root(os.getcwd())
    drop_capabilities()
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
del ctypes, libc, resource
program = sys.stdin.read()
try:
    code = compile(program, "<generated>", "exec")
except SyntaxError as err:
    sys.exit("generated code does not parse: {}".format(err))
exec(code, {"__name__": "__main__"})
"""
for _name, _value in {
    "NO_SANDBOX_STATUS": str(NO_SANDBOX_STATUS),
    "NOBODY": str(NOBODY),
    "SYSTEM_FOLDERS": repr(SYSTEM_FOLDERS),
    "DEVICES": repr(DEVICES),
}.items():
    _HARNESS = _HARNESS.replace(_name, _value)


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
            # One BLAS thread: every sandbox shares nobody's process limit, threads included.
            env={
                "PATH": "/usr/bin:/bin",
                "HOME": scratch,
                "TMPDIR": scratch,
                "OPENBLAS_NUM_THREADS": "1",
                "OMP_NUM_THREADS": "1",
            },
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
            f"{message.strip()}; generated code runs only isolated (no network, no host "
            "mounts), so run the HumanEval evaluation where these namespaces are allowed "
            "(e.g. sysctl kernel.unprivileged_userns_clone=1, or a container that may unshare) "
            "or turn it off with evaluate.humaneval=false"
        )
    return Outcome("passed" if child.returncode == 0 else "failed")
