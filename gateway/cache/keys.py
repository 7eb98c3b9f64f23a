"""What a phrase-cache entry is keyed by, and which texts may be cached at all.

The key is a SHA-256 over everything that shapes the audio a provider sends for a job: the
provider instance (its name, type and every setting that is not a secret: a ``model`` or
``base_url`` change is a new key, a rotated API key is not), the provider's voice, the options
merged after the emotion mapping, the built-in emotion still to apply, the caller's
``instructions``, the shaped text, the native format, and whatever else the plugin says its
answer depends on (:meth:`providers.base.Provider.cache_facets`). So a routing change that
alters any of them can never replay stale audio. The sample rate the caller asked for is not in
it unless it picks another native format: one entry serves every rate.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Final

from providers.base import AudioFormat, Provider, SynthesisJob, is_secret_name

from ..config.model import CacheConfig

__all__ = ["KEY_PREFIX", "cache_key", "cacheable"]

#: Every key starts so (a new layout of the key or of the stored entry gets a new version).
KEY_PREFIX: Final = "tts-gateway:phrase:v1:"

_DIGIT: Final = re.compile(r"\d")


def cacheable(text: str, config: CacheConfig) -> bool:
    """Whether a shaped text may be cached: not too long, and without digits when numbers are
    kept out (amounts, codes and numbers are often personal)."""
    if len(text) > config.max_text_chars:
        return False
    return not (config.skip_digits and _DIGIT.search(text))


def _public(value: Any) -> Any:
    """``value`` without what is named a secret, at any depth (a ``headers`` block's
    ``X-Api-Key``, as well as an ``api_key``): rotating a key keeps the cache, and no secret
    is hashed into a key that Redis keeps."""
    if isinstance(value, Mapping):
        return {k: _public(v) for k, v in value.items() if not is_secret_name(str(k))}
    if isinstance(value, list | tuple):
        return [_public(v) for v in value]
    return value


def _identity(provider: Provider) -> dict[str, Any]:
    settings = _public(dict(provider.config.settings))
    return {"name": provider.name, "type": provider.config.type, "settings": settings}


def cache_key(provider: Provider, job: SynthesisJob, native: AudioFormat) -> str:
    """The entry's key for ``job`` on ``provider`` answering in ``native``."""
    facets = {
        "provider": _identity(provider),
        "voice": job.voice,
        "options": job.options,
        "emotion": job.emotion,
        "instructions": job.instructions,
        "text": job.text,
        "native": [native.sample_rate, native.encoding, native.channels, native.container],
        "plugin": provider.cache_facets(job),
    }
    blob = json.dumps(facets, sort_keys=True, default=str, ensure_ascii=False)
    return KEY_PREFIX + hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()
