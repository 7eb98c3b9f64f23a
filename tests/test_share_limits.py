"""The gateway's limits over several worker processes: each takes its share of
``max_concurrent_streams`` and of every provider's ``max_concurrency``, so that together they
take what one process would; and how many workers ``serve`` runs."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.config import default_config, load_config
from gateway.runtime import Gateway, share_limits
from gateway.supervisor import workers_wanted
from tests.support import provider_block, scripted_config


def limits_file(tmp_path: Path, streams: int) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        scripted_config(
            {"a": {"provider": "capped"}, "b": {"provider": "open"}},
            {"capped": provider_block(max_concurrency=5), "open": provider_block()},
            max_concurrent_streams=streams,
        )
    )
    return path


def test_the_limits_are_split_between_the_workers_rounded_up(tmp_path: Path) -> None:
    config = load_config(str(limits_file(tmp_path, streams=3)))
    shared = share_limits(config, 2)
    assert shared.server.max_concurrent_streams == 2
    assert shared.providers["capped"].max_concurrency == 3
    # A provider without a limit of its own has the gateway's stream limit: split the same.
    assert config.providers["open"].max_concurrency == 3
    assert shared.providers["open"].max_concurrency == 2
    # Nothing else changes.
    assert shared.voices == config.voices
    assert shared.server.port == config.server.port
    assert shared.providers["capped"].timeout == config.providers["capped"].timeout
    # Each worker takes at least one, however many there are.
    many = share_limits(config, 8)
    assert many.server.max_concurrent_streams == 1
    assert many.providers["capped"].max_concurrency == 1
    assert share_limits(config, 1) is config


def test_the_bundled_voice_is_split_too() -> None:
    config = default_config()
    [name] = config.providers
    assert config.providers[name].max_concurrency == 2
    assert share_limits(config, 2).providers[name].max_concurrency == 1


async def test_a_worker_keeps_its_share_across_a_reload(tmp_path: Path) -> None:
    path = limits_file(tmp_path, streams=4)
    gateway = Gateway(load_config(str(path)), str(path), workers=2)
    assert gateway.config.server.max_concurrent_streams == 2
    limits_file(tmp_path, streams=10)
    assert await gateway.reload() is True
    try:
        assert gateway.config.server.max_concurrent_streams == 5
        assert gateway.config.providers["capped"].max_concurrency == 3
    finally:
        await gateway.stop()


def test_workers_wanted_is_the_flag_else_the_file_else_one_per_core() -> None:
    cores = len(os.sched_getaffinity(0))
    assert workers_wanted(0, None) == cores  # server.workers: auto
    assert workers_wanted(3, None) == 3
    assert workers_wanted(3, 1) == 1  # --workers wins
    assert workers_wanted(0, 2) == 2
