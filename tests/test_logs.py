"""The gateway's log (``gateway.logs``): the masking formatter, the libraries held quiet, the
levels. That no provider's secret reaches any line at any level, through the gateway to each
provider type, is part of the provider contract (``tests/test_provider_contract.py``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import pytest

from gateway.logs import configure_logging
from providers.base import ProviderConfig, build_provider
from tests.support import logging_at_debug

TOKEN = "tok-LEAKCHECK-fedcba9876543210"
HEADER_TOKEN = "hdr-LEAKCHECK-5566778899"


@pytest.fixture
def debug_log(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    with logging_at_debug(capsys) as read:
        yield read


def test_the_formatter_masks_every_providers_secrets_in_messages_and_tracebacks(
    debug_log: Callable[[], str],
) -> None:
    provider = build_provider(
        ProviderConfig(
            name="up",
            type="custom",
            settings={
                "url": "https://tts.upstream.test/stream-audio",
                "token": TOKEN,
                "headers": {"X-Api-Key": HEADER_TOKEN},
            },
        )
    )
    log = logging.getLogger("gateway.test")
    log.warning("echoed %s and %s", TOKEN, HEADER_TOKEN)
    try:
        raise RuntimeError(f"upstream said {TOKEN}")
    except RuntimeError:
        log.exception("failed")
    written = debug_log()
    assert "upstream said ***" in written and "echoed *** and ***" in written
    assert TOKEN not in written and HEADER_TOKEN not in written
    assert provider.secrets  # alive until here: its secrets are the ones masked


def test_libraries_that_log_what_they_send_are_held_at_warning(
    debug_log: Callable[[], str],
) -> None:
    assert logging.getLogger().level == logging.DEBUG
    for name in ("httpx", "httpcore", "websockets", "botocore"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING
    configure_logging("error")  # never lowered below the gateway's own level
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.ERROR
    configure_logging("debug")
    handlers = [h for h in logging.getLogger().handlers if type(h).__name__ == "_StderrHandler"]
    assert len(handlers) == 1  # configured twice, one handler


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("chatty")


def test_a_secret_is_masked_as_it_reads_escaped_in_json_or_a_repr(
    debug_log: Callable[[], str],
) -> None:
    secret = 'tok"LEAKCHECK\\9f8e7d-ü'  # a quote, a backslash, a non-ASCII letter
    provider = build_provider(
        ProviderConfig(
            name="up",
            type="custom",
            settings={"url": "https://tts.upstream.test/stream-audio", "token": secret},
        )
    )
    # An upstream's JSON error body echoing it, read as text; a value logged with %r.
    echoed = json.dumps({"fault": f"token {secret} refused"})
    logging.getLogger("gateway.test").warning("upstream said %s; sent %r", echoed, secret)
    written = debug_log()
    assert "LEAKCHECK" not in written
    assert 'upstream said {"fault": "token *** refused"}; sent \'***\'' in written
    assert provider.redact(echoed) == '{"fault": "token *** refused"}'
