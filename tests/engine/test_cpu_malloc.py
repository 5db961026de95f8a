"""keep_freed_memory: glibc's mallopt settings for CPU engines, applied once, with an opt-out."""
import platform

import pytest

from flagstack.engine import cpu_malloc


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.setattr(cpu_malloc, "_applied", None)


def test_opt_out_leaves_glibc_defaults(monkeypatch):
    monkeypatch.setenv("FLAGSTACK_CPU_MALLOC", "0")
    calls = []
    monkeypatch.setattr(cpu_malloc.ctypes, "CDLL", lambda name: calls.append(name))
    assert cpu_malloc.keep_freed_memory() is False
    assert calls == []  # the C library was not even opened


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_settings_take_effect_once(monkeypatch):
    monkeypatch.delenv("FLAGSTACK_CPU_MALLOC", raising=False)
    assert cpu_malloc.keep_freed_memory() is True
    monkeypatch.setattr(cpu_malloc.ctypes, "CDLL", lambda name: pytest.fail("applied twice"))
    assert cpu_malloc.keep_freed_memory() is True


def test_a_c_library_without_mallopt_is_left_alone(monkeypatch):
    monkeypatch.delenv("FLAGSTACK_CPU_MALLOC", raising=False)
    monkeypatch.setattr(cpu_malloc.sys, "platform", "linux")
    monkeypatch.setattr(cpu_malloc.ctypes, "CDLL", lambda name: object())  # no mallopt attribute (e.g. musl)
    assert cpu_malloc.keep_freed_memory() is False
