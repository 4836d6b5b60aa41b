"""restoration.runtime: the process-wide malloc thresholds the commands and the app set."""
from __future__ import annotations

import platform

import pytest

from restoration import runtime


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.setenv(runtime.ENV_SWITCH, "0")
    assert runtime.tune_allocator() is False
    assert runtime.allocator_settings() is None


def test_bad_thresholds_are_refused():
    for mmap_mb, trim_mb in ((0, 256), (512, 256), (-1, 1)):
        with pytest.raises(ValueError, match="mmap_threshold_mb"):
            runtime.tune_allocator(mmap_mb, trim_mb)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_applies_on_glibc_and_is_recorded(monkeypatch):
    monkeypatch.delenv(runtime.ENV_SWITCH, raising=False)
    monkeypatch.setattr(runtime, "_applied", None)
    assert runtime.tune_allocator(64, 128) is True  # mallopt returned 1 for both thresholds
    assert runtime.allocator_settings() == {"mmap_threshold_mb": 64, "trim_threshold_mb": 128}
    assert runtime.tune_allocator() is True
    assert runtime.allocator_settings() == {"mmap_threshold_mb": 128, "trim_threshold_mb": 256}


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_set_malloc_thresholds_is_the_mechanism(monkeypatch):
    calls = []
    real = runtime.set_malloc_thresholds
    monkeypatch.setattr(runtime, "set_malloc_thresholds", lambda m, t: calls.append((m, t)) or real(m, t))
    monkeypatch.delenv(runtime.ENV_SWITCH, raising=False)
    monkeypatch.setattr(runtime, "_applied", None)
    assert runtime.tune_allocator(32, 64) is True
    assert calls == [(32 << 20, 64 << 20)]
    assert runtime.tune_allocator() is True  # back to the defaults the commands use
