"""The routing file: YAML in, frozen dataclasses out, every mistake reported at once.

Ops write this file by hand, so the loader is strict and talkative: unknown keys, duplicate keys,
wrong types, dangling references and fallback cycles are all errors, each naming the file, the
key path (``voices.alloy.fallback[0]``) and the line. Nothing stops at the first problem; the
whole file is checked and :class:`ConfigError` carries every problem found.

A routing file may be crafted, so reading it is bounded (:mod:`.limits`), and every such limit is
reported as a problem like any other mistake.

The modules, in the order a file goes through them:

- :mod:`.load`: the entry points, :func:`load_config` and :func:`parse_config`;
- :mod:`.yaml_reader`: YAML into plain values with the line of every key path, within bounds,
  and :mod:`.env`, the ``${NAME}`` / ``${NAME:-default}`` expansion in values;
- :mod:`.schema`: the whole file, through :mod:`.server_section`, :mod:`.provider_section`
  (with the plugins' own checks, :mod:`.plugin_checks`), :mod:`.voice_section` and
  :mod:`.fallbacks`, each reading values with the typed readers of :mod:`.readers`;
- :mod:`.report` collects the problems, worded by :mod:`.messages`;
- :mod:`.model`: what comes out, the frozen dataclasses.
"""

from __future__ import annotations

from .limits import MAX_FILE_BYTES
from .load import load_config, parse_config
from .model import (
    ClientTimeouts,
    ConfigError,
    ConfigProblem,
    GatewayConfig,
    LogFormat,
    LogLevel,
    MetricsEndpoint,
    Resampler,
    ServerConfig,
    UnknownVoice,
    VoiceConfig,
    default_config,
)

__all__ = [
    "MAX_FILE_BYTES",
    "ClientTimeouts",
    "ConfigError",
    "ConfigProblem",
    "GatewayConfig",
    "LogFormat",
    "LogLevel",
    "MetricsEndpoint",
    "Resampler",
    "ServerConfig",
    "UnknownVoice",
    "VoiceConfig",
    "default_config",
    "load_config",
    "parse_config",
]
