"""One `flagstack serve` subprocess (embedded SmolLM2, 127.0.0.1, api key) shared by tests/server/.

The pool is small on purpose: 4 sequences per step and 64 KV blocks, so a burst of clients queues.
A test that stops the server (SIGTERM) leaves it dead; the next `server` use starts a fresh one.
Tests marked `both_engine_modes` run twice: with the engine in a thread of the server (the CPU default,
as every other test runs) and in an engine process (the CUDA default).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import openai
import pytest

API_KEY = "sk-flagstack-test"
MODEL = "SmolLM2-135M-Instruct"
MAX_MODEL_LEN = 512
NUM_KV_BLOCKS = 64
START_TIMEOUT_S = 600  # loading the GGUF takes ~15 s alone, minutes on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, engine_mode: str) -> None:
        self.engine_mode = engine_mode  # "thread" or "process"
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.log = tempfile.TemporaryFile(mode="w+")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "flagstack.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--api-key", API_KEY, "--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", "4",
               "--num-kv-blocks", str(NUM_KV_BLOCKS), "--log-level", "warning",
               "--engine-process" if self.engine_mode == "process" else "--no-engine-process"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ})
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"the server did not answer /health within {START_TIMEOUT_S} s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:]

    def stop(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "both_engine_modes: run against a server with an engine thread and "
                                       "one with an engine process")


def pytest_generate_tests(metafunc) -> None:
    if "server_process" in metafunc.fixturenames:
        both = metafunc.definition.get_closest_marker("both_engine_modes") is not None
        metafunc.parametrize("server_process", ["thread", "process"] if both else ["thread"], indirect=True,
                             scope="package")


@pytest.fixture(scope="package")
def server_process(request):
    proc = ServerProcess(request.param)
    yield proc
    proc.stop()


@pytest.fixture
def server(server_process) -> ServerProcess:
    """The running server (started on first use, or again after a test stopped it)."""
    if not server_process.alive():
        server_process.start()
    return server_process


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=300)


@pytest.fixture
def http(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=300) as c:
        yield c


def metric(http: httpx.Client, name: str) -> float:
    """One unlabelled sample of /metrics."""
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)
