"""Message signing (issue "Nothing lost, nothing leaked", 6): with ``security_key`` /
``security_certificate`` / ``security_cert_store`` set, task messages, control messages and
results are signed (Celery's ``auth`` serializer); a worker refuses a message that is unsigned or
signed by a certificate outside its store, logs it, and fails the message's pool entries with
the reason (they never run). Real ``celery worker`` subprocesses on a private Redis.
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import redis

import fused_celery as fused
from fused_celery.errors import SigningConfigError
from fused_celery.options import Options, options

SECURITY_FIELDS = ("security_key", "security_certificate", "security_cert_store")


def make_identity(folder: Path, name: str) -> tuple[Path, Path]:
    """A fresh RSA key and a self-signed certificate for it: ``(key.pem, cert.pem)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, dict[str, str]]:
    """The cluster's identity (its certificate alone in the trusted store) and a rogue one."""
    key, cert = make_identity(tmp_path / "cluster", "cluster")
    store = tmp_path / "trusted"
    store.mkdir()
    (store / "cluster.pem").write_bytes(cert.read_bytes())
    rogue_key, rogue_cert = make_identity(tmp_path / "rogue", "rogue")
    return {
        "cluster": {
            "security_key": str(key),
            "security_certificate": str(cert),
            "security_cert_store": str(store / "*.pem"),
        },
        "rogue": {
            "security_key": str(rogue_key),
            "security_certificate": str(rogue_cert),
            "security_cert_store": str(store / "*.pem"),
        },
    }


def use(identity: dict[str, str] | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sign this process's messages with ``identity`` (None: no signing)."""
    for field in SECURITY_FIELDS:
        monkeypatch.setattr(options, field, (identity or {}).get(field))


def worker_env(identity: dict[str, str]) -> dict[str, str]:
    return {f"FUSED_CELERY_{k.upper()}": v for k, v in identity.items()}


@pytest.fixture
def signed_cluster(pki, fused_options, celery_workers, monkeypatch):
    """One signed worker (concurrency 2) on the test Redis; this process signs too."""
    monkeypatch.setattr(options.show, "enable_tqdm", False)
    use(pki["cluster"], monkeypatch)
    [worker] = celery_workers(n=1, concurrency=2, env=worker_env(pki["cluster"]))
    yield worker
    use(None, monkeypatch)
    from fused_celery.celery_app import get_app

    get_app()  # back to plain JSON in this process


@fused.udf
def square(x: int) -> int:
    return x * x


def _queued_message(url: str, queue: str) -> dict:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while not client.llen(queue):
        assert time.monotonic() < deadline, f"nothing queued on {queue}"
        time.sleep(0.05)
    raw = client.lindex(queue, 0)
    client.close()
    return json.loads(raw)


def test_signed_cluster_runs_a_pool_and_its_messages_are_signed(
    signed_cluster, redis_url, monkeypatch
):
    monkeypatch.setattr(options, "autoscale_submit_check", False)  # m5.large has no worker
    pool = square.map(list(range(30)), engine="remote")
    assert pool.results() == [x * x for x in range(30)]
    assert pool.all_succeeded()
    # what travels: a message of a queue no worker serves, read from Redis as it waits there
    waiting = square.map([1], engine="m5.large")
    message = _queued_message(redis_url, "m5.large")
    assert message["content-type"] == "application/data"  # the auth serializer's envelope
    assert b'"x"' not in message["body"].encode()  # not plain JSON
    waiting.cancel()
    log = signed_cluster.log()
    assert "Refusing" not in log and "Can't decode" not in log


def test_signed_cluster_signs_chord_results_of_an_ingest(signed_cluster, tmp_path):
    rng = np.random.default_rng(0)
    src = gpd.GeoDataFrame(
        {"uid": np.arange(300)},
        geometry=gpd.points_from_xy(rng.uniform(-10, 10, 300), rng.uniform(-10, 10, 300)),
        crs=4326,
    )
    resp = fused.ingest(src).run_remote(output_table=str(tmp_path / "out"))
    resp.wait_for_job(timeout=120)
    assert resp.status == "Done", "\n".join(resp.get_logs()[-6:])
    assert fused.open_table(str(tmp_path / "out")).num_rows == 300


@pytest.mark.parametrize("client", ["unsigned", "rogue"])
def test_worker_refuses_and_reports_a_message_it_cannot_trust(
    client: str, signed_cluster, pki, monkeypatch
):
    use(None if client == "unsigned" else pki["rogue"], monkeypatch)
    pool = square.map(list(range(4)), engine="remote")
    pool.wait(timeout=60)
    assert pool.done() and not pool.any_succeeded()
    errors = pool.errors()
    assert sorted(errors) == [0, 1, 2, 3]
    message = str(errors[0])
    assert "refused" in message and "security_key" in message
    expected = "not signed" if client == "unsigned" else "signature"
    assert expected in message, message
    assert all(not log for log in pool.logs())  # nothing ran
    log = signed_cluster.log()
    assert f"refused a message (task fused_celery.run_entries, id {pool.id}.b0" in log
    assert f"message {pool.id}.b0 refused: entries [0] failed" in log  # by the worker itself
    # the worker is still serving signed work
    use(pki["cluster"], monkeypatch)
    assert square.map([7], engine="remote").results() == [49]


def test_half_configured_signing_is_a_clear_error(pki, monkeypatch):
    from fused_celery.celery_app import celery_config

    monkeypatch.setattr(options, "security_key", pki["cluster"]["security_key"])
    with pytest.raises(SigningConfigError, match="security_certificate"):
        celery_config()
    use(pki["cluster"], monkeypatch)
    monkeypatch.setattr(
        options,
        "security_cert_store",
        str(Path(pki["cluster"]["security_key"]).parent / "none-*.pem"),
    )
    with pytest.raises(SigningConfigError, match="no certificate"):
        celery_config()


@pytest.mark.parametrize(
    "command", [["worker"], ["flower", "--port", "0"], ["up", "--flower-port", "0"]]
)
def test_cli_with_half_configured_signing_exits_2(command, pki, tmp_path, clean_env):
    import subprocess
    import sys

    env = {
        **clean_env,
        "FUSED_CELERY_BROKER_URL": "redis://127.0.0.1:1/0",
        "FUSED_CELERY_SECURITY_KEY": pki["cluster"]["security_key"],
    }
    result = subprocess.run(
        [sys.executable, "-m", "fused_celery.cli", *command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result
    assert "security_certificate" in result.stderr and "Traceback" not in result.stderr


def test_json_only_when_signing_is_off(monkeypatch):
    from fused_celery.celery_app import celery_config

    use(None, monkeypatch)
    config = celery_config()
    assert config["accept_content"] == ["json"] and config["result_accept_content"] == ["json"]
    assert config["task_serializer"] == "json" and config["result_serializer"] == "json"


def test_key_password_is_secret(pki):
    fresh = Options(security_key_password="hunter2-pass", **pki["cluster"])
    assert "hunter2-pass" not in repr(fresh)


def test_workers_started_from_code_sign_like_their_parent(pki, monkeypatch):
    from fused_celery.cluster.local_cluster import child_env

    use(pki["cluster"], monkeypatch)
    monkeypatch.setattr(options, "security_key_password", "pass-phrase")
    env = child_env("redis://127.0.0.1:1/0")
    for field in SECURITY_FIELDS:
        assert env[f"FUSED_CELERY_{field.upper()}"] == pki["cluster"][field]
    assert env["FUSED_CELERY_SECURITY_KEY_PASSWORD"] == "pass-phrase"
