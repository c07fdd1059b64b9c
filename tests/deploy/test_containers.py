"""deploy/Dockerfile and deploy/compose.yaml, built and run with podman.

Runs only with ``LOWTIDE_CONTAINER_TESTS=1`` and podman, docker-compose and debootstrap
installed (``apt-get install podman runc docker-compose debootstrap``): it takes minutes (about
10 the first time, when it makes the base image from Debian's packages and builds the images;
about 4 after that, on the build cache), so ``make test`` skips it. See docs/deployment.md.

Everything listens on loopback: the containers use the host's network (``--network host``),
and compose's service names resolve to 127.0.0.1. The compose file is run as shipped but for
that (networks, ports and listen addresses), and with stand-ins for the postgres and MinIO
images (deploy/test-images/), built from Debian's packages because no registry is reachable.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from lowtide.testing.harness import free_port, spawn

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
IMAGE = "localhost/lowtide:test"
KEY = "sk-container-test-0001"
TOOLS = ("podman", "docker-compose", "debootstrap")

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("LOWTIDE_CONTAINER_TESTS") != "1",
        reason="container tests run with LOWTIDE_CONTAINER_TESTS=1 (minutes; see the docstring)",
    ),
    pytest.mark.skipif(
        any(shutil.which(tool) is None for tool in TOOLS),
        reason=f"container tests need {', '.join(TOOLS)}",
    ),
    pytest.mark.timeout(1800),
]


def containers_conf(path: Path) -> Path:
    """podman's settings for this machine: limits it may set (no higher than ours), and runc
    where installed (crun refuses a host whose cgroups are half v1, half v2)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc = [min(limit, 32768) for limit in resource.getrlimit(resource.RLIMIT_NPROC)]
    text = (
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile[0]}:{nofile[1]}", "nproc={nproc[0]}:{nproc[1]}"]\n'
    )
    if shutil.which("runc"):
        text += '[engine]\nruntime = "runc"\n'
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def engine_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    conf = containers_conf(tmp_path_factory.mktemp("podman") / "containers.conf")
    env = {**os.environ, "CONTAINERS_CONF": str(conf), "CONTAINER_ENGINE": "podman"}
    env["BUILD_ARGS"] = "--network host"  # apt reaches Debian's mirror without a bridge
    env["BASE_IMAGE"] = os.environ.get("LOWTIDE_BASE_IMAGE", "localhost/debian:bookworm-minbase")
    if "LOWTIDE_BASE_IMAGE" not in os.environ:
        run([str(DEPLOY / "debian-base.sh"), env["BASE_IMAGE"]], env)
    run([str(DEPLOY / "build-image.sh"), IMAGE], env)
    run([str(DEPLOY / "test-images" / "build.sh")], env)
    yield env


def run(cmd: list[str], env: dict[str, str], timeout: float = 1200) -> str:
    result = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def wait_http(url: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return json.loads(answer.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def run_test_batch(base_url: str) -> None:
    """A batch of the built-in test model, through the official SDK, to completion."""
    c = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=2, timeout=30)
    lines = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/ds-test",
            "body": {"model": "batch-test-model", "messages": [{"role": "user", "content": "hi"}]},
        }
        for i in range(20)
    ]
    upload = c.files.create(
        file=("in.jsonl", "\n".join(json.dumps(line) for line in lines).encode()),
        purpose="batch",
    )
    batch = c.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/ds-test", completion_window="24h"
    )
    deadline = time.monotonic() + 120
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, f"batch stuck in {batch.status}"
        time.sleep(0.5)
        batch = c.batches.retrieve(batch.id)
    assert batch.status == "completed"
    assert batch.output_file_id is not None
    assert len(c.files.content(batch.output_file_id).text.splitlines()) == 20


def test_image_serves_a_batch_and_stops_cleanly_on_sigterm(
    engine_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "lowtide.toml"
    config.write_text(f'[[api_keys]]\nkey = "{KEY}"\naccount = "default"\n')
    config.chmod(0o644)  # read by the image's lowtide user
    name = f"lowtide-test-{secrets.token_hex(4)}"
    podman_run = ["podman", "run", "--detach", "--name", name, "--network", "host"]
    mount = ["--volume", f"{config}:/etc/lowtide/lowtide.toml:ro"]
    serve = ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", "/var/lib/lowtide"]
    run([*podman_run, *mount, IMAGE, *serve], engine_env)
    try:
        assert wait_http(f"http://127.0.0.1:{port}/health") == {"status": "ok"}
        run_test_batch(f"http://127.0.0.1:{port}/v1")
        run(["podman", "stop", "--time", "30", name], engine_env)
        code = run(["podman", "inspect", name, "--format", "{{.State.ExitCode}}"], engine_env)
        assert code.strip() == "0", run(["podman", "logs", name], engine_env)
    finally:
        subprocess.run(["podman", "rm", "--force", name], env=engine_env, check=False)


def loopback_compose(workdir: Path, ports: dict[str, int]) -> Path:
    """deploy/compose.yaml and fleet.toml in ``workdir``, changed only to listen on loopback
    ports of the host's network."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for service in compose["services"].values():
        service["network_mode"] = "host"
        service["extra_hosts"] = ["db:127.0.0.1", "s3:127.0.0.1"]
        service.pop("ports", None)
    services = compose["services"]
    services["db"]["command"] += ["-c", f"port={ports['db']}", "-c", "listen_addresses=127.0.0.1"]
    services["s3"]["command"] += ["--address", f"127.0.0.1:{ports['s3']}"]
    api = services["api"]["command"]
    api[api.index("--host") + 1] = "127.0.0.1"
    api[api.index("--port") + 1] = str(ports["api"])
    probe = services["api"]["healthcheck"]["test"]
    probe[-1] = probe[-1].replace(":8000/", f":{ports['api']}/")
    (workdir / "compose.yaml").write_text(yaml.safe_dump(compose, sort_keys=False))
    fleet = (DEPLOY / "fleet.toml").read_text()
    for old, new in (
        ("@db:5432/", f"@db:{ports['db']}/"),
        ("http://s3:9000", f"http://s3:{ports['s3']}"),
        ('key = "sk-change-me-0000"', f'key = "{KEY}"'),
    ):
        assert old in fleet, f"fleet.toml no longer has {old!r}"
        fleet = fleet.replace(old, new)
    (workdir / "fleet.toml").write_text(fleet)
    (workdir / "fleet.toml").chmod(0o644)
    return workdir / "compose.yaml"


@pytest.fixture
def podman_socket(engine_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """podman's Docker-compatible API on a socket of its own, for docker-compose."""
    socket = tmp_path / "podman.sock"
    service = spawn(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        env=engine_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert service.poll() is None, "podman system service exited"
            assert time.monotonic() < deadline, "podman system service did not start"
            time.sleep(0.1)
        yield f"unix://{socket}"
    finally:
        service.terminate()
        service.wait(30)


def test_compose_fleet_runs_a_batch_on_postgres_and_s3(
    engine_env: dict[str, str], podman_socket: str, tmp_path: Path
) -> None:
    ports = {"db": free_port(), "s3": free_port(), "api": free_port()}
    compose = loopback_compose(tmp_path, ports)
    env = {
        **engine_env,
        "DOCKER_HOST": podman_socket,
        "LOWTIDE_IMAGE": IMAGE,
        "POSTGRES_IMAGE": "localhost/lowtide-test-postgres:latest",
        "S3_IMAGE": "localhost/lowtide-test-s3:latest",
    }
    project = ["docker-compose", "--project-name", f"lt{secrets.token_hex(4)}", "-f", str(compose)]
    run([*project, "up", "--detach"], env, timeout=300)
    try:
        # The API and the workers restart until the database has started (restart: on-failure).
        ready = wait_http(f"http://127.0.0.1:{ports['api']}/ready", timeout=180)
        assert ready == {"status": "ok", "database": "ok", "storage": "ok"}
        run_test_batch(f"http://127.0.0.1:{ports['api']}/v1")
        states = run([*project, "ps"], env)
        assert states.count(" Up ") >= 5, states  # db, s3, api and the two workers
    finally:
        subprocess.run(
            [*project, "down", "--volumes", "--timeout", "30"],
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
