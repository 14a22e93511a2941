"""docker-compose.yml and Procfile (issue 16, item 7): checked with a YAML parser, since no Docker
engine runs here: the services, their healthchecks, loopback-only published ports, the
autoscaler in dry-run mode, and the Procfile running the same services."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from fused_celery.options import WHITELISTED_INSTANCE_TYPES

REPO = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _procfile() -> dict[str, str]:
    lines = (REPO / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_services_and_their_healthchecks():
    services = _compose()["services"]
    assert set(services) == {
        "redis",
        "worker",
        "worker-m5-large",
        "worker-r5-large",
        "flower",
        "autoscaler",
    }
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name
        assert re.fullmatch(r"\d+s", check["interval"]) and check["retries"] >= 1, name
        if name != "redis":
            assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert "--maxmemory-policy" in services["redis"]["command"]
    assert (
        services["redis"]["command"][services["redis"]["command"].index("--maxmemory-policy") + 1]
        == "noeviction"
    )


def test_workers_serve_one_queue_each_and_are_pinged_by_name():
    services = _compose()["services"]
    workers = {n: s for n, s in services.items() if n.startswith("worker")}
    for name, service in workers.items():
        env = service["environment"]
        assert env["FUSED_CELERY_BROKER_URL"] == "redis://redis:6379/0"
        assert env["INSTANCE_TYPE"] in ("", *WHITELISTED_INSTANCE_TYPES)
        assert env["WORKER_NAME"] == name
        assert service["command"] == ["--hostname", f"{name}@%h"]
        assert "inspect ping" in service["healthcheck"]["test"][1]
        assert service["stop_signal"] == "SIGTERM"


def test_published_ports_are_on_loopback_only():
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)
            assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", port), (name, port)


def test_autoscaler_runs_in_dry_run_mode():
    autoscaler = _compose()["services"]["autoscaler"]
    assert autoscaler["entrypoint"] == ["fused-celery", "autoscale", "--dry-run"]
    assert "ports" not in autoscaler  # nothing to reach it by
    assert autoscaler["environment"]["FUSED_CELERY_BROKER_URL"] == "redis://redis:6379/0"


def test_procfile_runs_the_same_services():
    procs = _procfile()
    assert set(procs) >= {"redis", "worker", "flower", "autoscaler"}
    assert procs["autoscaler"].endswith("fused-celery autoscale --dry-run")
    assert procs["worker_m5_large"].endswith(
        "fused-celery worker --instance-type m5.large --concurrency 1"
    )
    for name, command in procs.items():
        if name != "redis":
            assert (
                "FUSED_CELERY_BROKER_URL=${FUSED_CELERY_BROKER_URL:-redis://127.0.0.1:" in command
            )
