"""``server.workers: auto``: one worker per core the process may use, a container's CPU limit
included."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway import supervisor
from gateway.supervisor import cpu_quota, workers_wanted


@pytest.mark.parametrize(
    ("text", "cores"),
    [("max 100000", None), ("150000 100000", 1.5), ("50000 100000", 0.5), ("garbage", None)],
)
def test_the_cgroup_cpu_limit_is_read_as_cores(tmp_path: Path, text: str, cores: float) -> None:
    limit = tmp_path / "cpu.max"
    limit.write_text(text + "\n")
    assert cpu_quota(str(limit)) == cores


def test_a_missing_cgroup_file_is_no_limit(tmp_path: Path) -> None:
    assert cpu_quota(str(tmp_path / "absent")) is None


def test_auto_takes_the_smaller_of_the_cpus_and_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(supervisor, "cpu_quota", lambda: 1.5)
    assert workers_wanted(0, None) == 2  # a 1.5-core limit: two workers, rounded up
    monkeypatch.setattr(supervisor, "cpu_quota", lambda: None)
    assert workers_wanted(0, None) == 8
    monkeypatch.setattr(supervisor, "cpu_quota", lambda: 0.25)
    assert workers_wanted(0, None) == 1
    assert workers_wanted(0, 3) == 3  # --workers wins
    assert workers_wanted(5, None) == 5  # so does a number in the file
