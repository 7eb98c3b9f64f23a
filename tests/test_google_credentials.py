"""A Google service-account ``credentials_file`` is checked when the routing file loads, by
loading it with google-auth as the provider will: a file that would make the provider fail to
build is a listed problem at ``providers.<name>.credentials_file``, never a surprise later."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from providers.base import ProviderConfig, build_provider

PATH = "providers.g.credentials_file"


def private_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def key_info(**changes: Any) -> dict[str, Any]:
    """A service-account key file's fields, as the console writes them."""
    info: dict[str, Any] = {
        "type": "service_account",
        "project_id": "demo",
        "private_key_id": "k1",
        "private_key": private_key_pem(),
        "client_email": "tts@demo.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    for name, value in changes.items():
        if value is None:
            del info[name]
        else:
            info[name] = value
    return info


def routing(path: Path) -> str:
    return (
        f"providers: {{g: {{type: google, credentials_file: {json.dumps(str(path))}}}}}\n"
        "voices: {v: {provider: g}}\nserver: {default_voice: v}\n"
    )


def credential_problem(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(routing(path))
    [problem] = caught.value.problems
    assert (problem.path, problem.line) == (PATH, 1)
    return problem.message


def test_a_good_key_loads_and_builds(tmp_path: Path) -> None:
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(key_info()))
    config = parse_config(routing(path))
    build_provider(config.providers["g"])  # what a reload does next: it must not raise


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not json at all", "is not JSON: expected a service-account key file"),
        (b"\xff\xfe garbage", "is not JSON: expected a service-account key file"),
        (b"[" * 50_000, "is not JSON: expected a service-account key file"),
        (b'["service_account"]', "is not a JSON object: expected a service-account key file"),
        (
            json.dumps(key_info(type="authorized_user")).encode(),
            "is not a service-account key ('type' is 'authorized_user', not 'service_account')",
        ),
        (
            json.dumps(key_info(type=None)).encode(),
            "is not a service-account key ('type' is missing, not 'service_account')",
        ),
        (
            json.dumps(key_info(client_email=None, token_uri=7)).encode(),
            "lacks client_email, token_uri (needed for a service-account token)",
        ),
        (
            json.dumps(key_info(private_key="")).encode(),
            "lacks private_key (needed for a service-account token)",
        ),
        (
            json.dumps(
                key_info(private_key="-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")
            ).encode(),
            "google-auth cannot load the key",
        ),
        (b"{" + b" " * (64 * 1024) + b"}", "is over 64 KiB: not a service-account key"),
    ],
    ids=[
        "text",
        "binary",
        "deep-json",
        "array",
        "user-credentials",
        "no-type",
        "missing-fields",
        "empty-key",
        "broken-key",
        "huge",
    ],
)
def test_a_malformed_key_file_is_a_problem(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "sa.json"
    path.write_bytes(content)
    message = credential_problem(path)
    assert message.startswith(repr(str(path)))
    assert expected in message
    if "'type'" in expected:
        return  # google-auth itself would take it, and then sign as what it is not
    # Every other one would have made building the provider (a reload) raise.
    with pytest.raises(Exception):  # noqa: B017 - google-auth raises several types
        build_provider(
            ProviderConfig(name="g", type="google", settings={"credentials_file": str(path)})
        )


def test_the_key_never_appears_in_the_problem(tmp_path: Path) -> None:
    pem = private_key_pem()
    body = pem.splitlines()[1]
    broken = pem.replace(body, body[::-1])  # still base64, no longer a key
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(key_info(private_key=broken, client_email=None)))
    message = credential_problem(path)
    assert body[::-1] not in message
    path.write_text(json.dumps(key_info(private_key=broken)))
    message = credential_problem(path)
    assert "google-auth cannot load the key" in message and body[::-1] not in message


def test_a_fifo_is_not_read(tmp_path: Path) -> None:
    import os

    path = tmp_path / "sa.json"
    os.mkfifo(path)  # reading it would block for ever
    assert credential_problem(path) == f"no such file: {str(path)!r}"
