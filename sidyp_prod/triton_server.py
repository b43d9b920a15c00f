"""Run the tritonserver binary shipped in the ``nvidia-pytriton`` wheel on a model repository.

That binary has only the python backend, and it needs three things the wheel does not set up:
the Python 3.11 stub next to ``libtriton_python.so`` in one backend directory, the wheel's own
libraries and the interpreter's ``LIBDIR`` on ``LD_LIBRARY_PATH``, and this interpreter's
``bin`` first on ``PATH`` (the stub finds its Python there; it ignores ``PYTHONPATH``). A broken
stub makes the server hang rather than fail, so readiness is awaited with a deadline, and each
server gets its own shared-memory prefix so its ``/dev/shm`` regions can be removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SHM_DIR = Path("/dev/shm")


class ServerError(RuntimeError):
    """The server could not start, or stopped; the message carries its own log."""


def single_thread_instances(repository: Path, config_name: str) -> dict[str, int]:
    """Models whose CPU instances run one ONNX Runtime thread each (``export --cpu-instances``
    above 1), with their instance count, in the configuration a server started with
    ``--model-config-name config_name`` loads (``configs/NAME.pbtxt``, else ``config.pbtxt``)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    counts = {}
    for model in sorted(p for p in Path(repository).iterdir() if p.is_dir()):
        path = model / "configs" / f"{config_name}.pbtxt"
        path = path if path.exists() else model / "config.pbtxt"
        if not path.exists():
            continue
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        threads = config.parameters.get("intra_op_thread_count")
        if threads is not None and threads.string_value == "1":
            counts[model.name] = sum(group.count for group in config.instance_group
                                     if group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU)
    return counts


def instances_note(repository: Path, config_name: str, cores: int) -> str | None:
    """What to tell a user whose repository's one-thread CPU instances do not match this host's
    cores (the count defaults to the exporting machine's): None when they match."""
    counts = single_thread_instances(repository, config_name)
    mismatched = {name: n for name, n in counts.items() if n != cores}
    if not mismatched:
        return None
    models = ", ".join(f"{name} {n}" for name, n in mismatched.items())
    return (f"note: the CPU models run one ONNX Runtime thread per instance ({models} "
            f"instances) on a host with {cores} cores; `sidyp-prod export BUNDLE --no-onnx "
            f"--triton-repo DIR --cpu-instances {cores}` writes a repository for this host")


@dataclass
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise ServerError(
            "the local tritonserver comes from the nvidia-pytriton wheel: "
            "pip install 'sidyp-prod[triton]'"
        ) from exc
    root = Path(pytriton.__file__).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise ServerError(f"no tritonserver binary under {root}")
    return root


def prepare_backend_directory(target: Path) -> Path:
    """A writable backend directory: the python backend with the stub of this Python."""
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"nvidia-pytriton ships no python backend stub for Python {version}")
    python = target / "python"
    python.mkdir(parents=True, exist_ok=True)
    for item in (root / "backends" / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, python / item.name)
    shutil.copy2(stub, python / stub.name)
    return target


def server_environment() -> dict[str, str]:
    root = pytriton_root()
    libs = [str(root.parent.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR")]
    env = dict(os.environ)
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


@dataclass
class TritonServer:
    """A local tritonserver process on ``repository``; a context manager that stops it."""

    repository: Path
    ports: Ports = field(default_factory=Ports)
    config_name: str | None = "python"
    startup_timeout: float = 120.0
    log_path: Path | None = None
    # The interface every endpoint binds to: this machine only, unless asked (0.0.0.0: all).
    host: str = "127.0.0.1"
    process: subprocess.Popen | None = None
    shm_prefix: str = field(default_factory=lambda: f"sidyp_{uuid.uuid4().hex[:8]}_")
    _workdir: tempfile.TemporaryDirectory | None = None

    @property
    def _url_host(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"[{host}]" if ":" in host else host

    @property
    def http_url(self) -> str:
        return f"http://{self._url_host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self._url_host}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._url_host}:{self.ports.metrics}/metrics"

    def ports_in_use(self) -> list[str]:
        """The endpoints whose port cannot be bound on ``host`` (another server has it)."""
        busy = []
        for name, port in (("HTTP", self.ports.http), ("gRPC", self.ports.grpc),
                           ("metrics", self.ports.metrics)):
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                # As a server binds: a port in TIME_WAIT (a server just stopped) is free, one
                # that another process listens on is not.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((self.host, port))
                except OSError as exc:
                    busy.append(f"{name} port {port} on {self.host} is in use ({exc.strerror})")
        return busy

    def command(self, backend_dir: Path) -> list[str]:
        command = [
            str(pytriton_root() / "bin" / "tritonserver"),
            f"--model-repository={Path(self.repository).absolute()}",
            f"--backend-directory={backend_dir}",
            f"--http-address={self.host}",
            f"--http-port={self.ports.http}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.ports.metrics}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--exit-on-error=true",
            "--strict-readiness=true",
        ]
        if self.config_name:
            command.append(f"--model-config-name={self.config_name}")
        return command

    def start(self) -> TritonServer:
        if not Path(self.repository).is_dir():
            raise ServerError(f"model repository {self.repository} does not exist")
        busy = self.ports_in_use()
        if busy:
            # Checked first: the health check would otherwise find the other server ready.
            raise ServerError(f"cannot serve: {'; '.join(busy)}; choose other ports "
                              "(--http-port, --grpc-port, --metrics-port)")
        self._workdir = tempfile.TemporaryDirectory(prefix="sidyp-triton-")
        work = Path(self._workdir.name)
        backend_dir = prepare_backend_directory(work / "backends")
        self.log_path = self.log_path or work / "tritonserver.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - the server writes it while it runs
        self.process = subprocess.Popen(
            self.command(backend_dir), stdout=log, stderr=subprocess.STDOUT,
            env=server_environment(), start_new_session=True,
        )
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not Path(self.log_path).exists():
            return ""
        text = Path(self.log_path).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def log_cause(self) -> str:
        """The log's last error line, or its last line: what the server died of."""
        lines = [line.strip() for line in self.log_tail(200).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("E") or "error" in line.lower()]
        return (errors or lines or ["(the log is empty)"])[-1]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self.process.poll() if self.process else 1
            if code is not None:
                raise ServerError(
                    f"tritonserver exited with code {code} while loading {self.repository}: "
                    f"{self.log_cause()}\n--- the server's log, last lines ---\n{self.log_tail()}"
                )
            if self.ready():
                return
            time.sleep(0.25)
        raise ServerError(
            f"tritonserver not ready after {self.startup_timeout:.0f} s on {self.repository} "
            f"(a broken python backend stub hangs instead of failing):\n{self.log_tail()}"
        )

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its shared-memory regions."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.remove_shared_memory()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: for tests of what clients do when the server vanishes."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.remove_shared_memory()

    def remove_shared_memory(self) -> None:
        if SHM_DIR.is_dir():
            for region in SHM_DIR.glob(f"{self.shm_prefix}*"):
                region.unlink(missing_ok=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
