"""SIGTERM: the server stops taking connections, finishes the running stream, then exits, and so does its
engine process. (Leaves the shared server stopped; the `server` fixture starts a new one if needed.)"""
from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.server.conftest import MODEL


def child_pids(pid: int) -> set[int]:
    """The processes `pid` started (all its threads' children, from /proc)."""
    return {int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()}


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.both_engine_modes
def test_sigterm_drains_the_running_request_then_exits(server, http):
    lines: list[str] = []
    first = threading.Event()

    def consume() -> None:
        body = {"model": MODEL, "prompt": "Count:", "max_tokens": 16, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        with http.stream("POST", "/v1/completions", json=body) as response:
            for line in response.iter_lines():
                if line:
                    lines.append(line)
                    first.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert first.wait(120)
    children = child_pids(server.proc.pid)  # the engine process (and multiprocessing's resource tracker)
    assert len(children) >= (1 if server.engine_mode == "process" else 0)
    server.proc.send_signal(signal.SIGTERM)
    reader.join(120)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 16  # all of them, though most came after the signal
    # uvicorn re-raises the captured SIGTERM once drained, so the exit is "by SIGTERM", not a crash
    assert server.proc.wait(60) in (0, -signal.SIGTERM)
    assert "Traceback" not in server.output()
    deadline = time.monotonic() + 30
    while any(running(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(running(c) for c in children)
