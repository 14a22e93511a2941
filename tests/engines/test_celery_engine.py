"""The Celery engine through its :class:`~fused_celery.engines.base.Engine` interface.

Real ``redis-server`` and real ``celery worker`` subprocesses (conftest fixtures); never eager
mode, never a Redis fake. Fault tests (SIGKILL, Redis restart, cancel + worker restart) are
marked ``slow``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from aof_redis import AofRedis

from fused_celery import codec
from fused_celery.cluster.redis_server import free_port
from fused_celery.engines import make_engine
from fused_celery.engines.base import FINISHED, Engine, PoolSpec
from fused_celery.engines.celery.client import CeleryEngine, plan_lanes
from fused_celery.errors import BrokerUnavailableError, PoolExpiredError, PoolNotFoundError
from fused_celery.options import options
from fused_celery.state import connection, keys, scripts
from fused_celery.state import pool_record as record
from fused_celery.state.events import EVENT_PAYLOAD_MAX_BYTES, PoolEvents
from fused_celery.state.pool_record import canonical_json
from fused_celery.state.statuses import ENTRY_STATUSES

DOUBLE = {
    "name": "f",
    "entrypoint": "f",
    "code": "def f(x):\n    return x * 2\n",
    "parameters": {},
}


def udf(code: str, name: str = "f") -> dict[str, Any]:
    """A UDF dict from source text defining ``name``."""
    return {"name": name, "entrypoint": name, "code": textwrap.dedent(code), "parameters": {}}


def spec_for(
    n: int, the_udf: dict[str, Any] = DOUBLE, extra: dict[str, Any] | None = None, **kw: Any
) -> PoolSpec:
    """A pool of ``n`` entries ``f(x=i, **extra)``."""
    args = [{"x": i, **(extra or {})} for i in range(n)]
    kw.setdefault("cache", False)
    return PoolSpec(udf=the_udf, args=args, encoded=[codec.encode_kwargs(a) for a in args], **kw)


def run_pool(spec: PoolSpec, timeout: float = 120.0) -> CeleryEngine:
    engine = make_engine("celery", spec)
    assert isinstance(engine, CeleryEngine)
    engine.submit()
    wait_finished(engine, timeout)
    return engine


def wait_finished(engine: Engine, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        counts = engine.counts()
        if sum(counts[s] for s in FINISHED) == engine.spec.n:
            by_state = Counter(state.status for state in engine.states())
            assert counts == by_state, "the counts hash is in step with the states"
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"pool not finished after {timeout} s: {dict(counts)}")
        engine.wait_for_change(1.0)


def wait_until(engine: Engine, predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate(engine.counts()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met after {timeout} s: {dict(engine.counts())}")
        engine.wait_for_change(0.5)


def values(engine: Engine) -> dict[int, Any]:
    outs = engine.outcomes(range(engine.spec.n))
    return {p: codec.decode(o["value"]) for p, o in outs.items() if o["ok"]}


# --------------------------------------------------------------------------- pure helpers


def test_plan_lanes() -> None:
    # max_workers counts messages in flight (the local engine's processes), each running its
    # batch of n_processes_per_worker entries on as many threads
    assert plan_lanes(100, 1, None) == (1, 0)
    assert plan_lanes(100, 10, None) == (10, 0)
    assert plan_lanes(100, 1, 4) == (1, 4)
    assert plan_lanes(100, 10, 4) == (10, 4)
    assert plan_lanes(100, 10, 10) == (10, 0)  # enough lanes for every batch: no cap needed
    assert plan_lanes(3, 1, 8) == (1, 0)


def test_unreachable_broker_names_url_and_writes_nothing(fused_options: Any) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    options.broker_url = dead
    options.result_backend = dead
    engine = make_engine("celery", spec_for(3))
    with pytest.raises(BrokerUnavailableError, match=dead.replace("/", "/")):
        engine.submit()


def test_submits_in_a_row_ping_once(fused_options: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pings: list[str] = []
    ping = redis.Redis.ping

    def counted(self: redis.Redis, **kw: Any) -> Any:
        pings.append("ping")
        return ping(self, **kw)

    make_engine("celery", spec_for(1)).submit()  # (kombu pings when it opens its channel)
    monkeypatch.setattr(redis.Redis, "ping", counted)
    monkeypatch.setattr(connection, "_answered", {})  # forget the answers seen so far
    for _ in range(3):
        make_engine("celery", spec_for(1)).submit()
    assert pings == ["ping"], "the first submit pings; the next ones trust its answer"


@pytest.mark.parametrize("inline", [True, False], ids=["one-script", "multi"])
def test_record_layout_at_submit(
    fused_options: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch, inline: bool
) -> None:
    """Submit writes every key of the record with its TTL (no workers: nothing runs), the same
    way for small pools (one script) and large ones (native writes, then the script)."""
    assert scripts.pool_create.keys == (*keys.PARTS, "tomb", "pools")
    monkeypatch.setattr(record, "CREATE_INLINE_MAX", 1000 if inline else 0)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    engine = make_engine("celery", spec_for(7, batch_size=2, max_workers=2))
    engine.submit()
    pid, k, ttl = engine.pool_id, keys.pool_keys(engine.pool_id), keys.record_ttl()
    for part, key in k.items():
        assert ttl - 10 <= client.ttl(key) <= ttl, part
    assert client.ttl(keys.tombstone_key(pid)) > ttl
    assert client.zscore(keys.POOLS_INDEX, pid) == pytest.approx(engine.spec.created_at)
    assert client.lrange(k["args"], 0, -1) == [canonical_json(e) for e in engine.spec.encoded]
    assert client.hgetall(k["state"]) == {str(p): "pending|1||" for p in range(7)}
    assert client.hgetall(k["counts"]) == {
        s: "7" if s == "pending" else "0" for s in ENTRY_STATUSES
    }
    assert client.get(k["version"]) == "0"
    meta = client.hgetall(k["meta"])
    assert (meta["n"], meta["batch_size"], meta["lanes"]) == ("7", "2", "2")
    assert engine.task_ids() == {0: f"{pid}.b0", 1: f"{pid}.b0", 2: f"{pid}.b1", 3: f"{pid}.b1"}
    assert engine.record.lanes() == {"0": "b0", "1": "b1"}
    assert client.lrange(k["backlog"], 0, -1) == ["b2", "b3"]
    for part in (*keys.PLACEHOLDER_HASHES, "tasks"):
        assert client.hexists(k[part], keys.PLACEHOLDER) == (part != "tasks"), part
    for part in keys.PLACEHOLDER_SETS:
        assert client.smembers(k[part]) == {keys.PLACEHOLDER}, part

    uncapped = make_engine("celery", spec_for(3))
    uncapped.submit()
    upid = uncapped.pool_id
    assert uncapped.task_ids() == {0: f"{upid}.b0", 1: f"{upid}.b1", 2: f"{upid}.b2"}
    assert uncapped.record.lanes() == {}
    assert not client.exists(keys.pool_key(upid, "backlog"))


def test_unknown_pool_id(fused_options: Any) -> None:
    with pytest.raises(PoolNotFoundError, match="no pool with id 'nope'"):
        CeleryEngine.attach("nope")


def test_unknown_instance_type_lists_allowed(fused_options: Any) -> None:
    with pytest.raises(ValueError, match="r5.large"):
        make_engine("celery", spec_for(1, queue="x9.huge"))


def test_expired_pool_says_so(fused_options: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "result_expires", 1)
    engine = make_engine("celery", spec_for(2))
    engine.submit()  # no workers needed: the record expires on its own
    time.sleep(2.2)
    with pytest.raises(PoolExpiredError, match="expired"):
        CeleryEngine.attach(engine.pool_id)
    with pytest.raises(PoolExpiredError):
        engine.states()


def test_worker_without_broker_fails_clearly(clean_env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "fused_celery.celery_app", "worker",
         "--pool", "solo", "--without-mingle", "--without-gossip"],
        env=clean_env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "FUSED_CELERY_BROKER_URL" in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- with workers


def test_200_entries_on_two_workers(fused_options: Any, celery_workers: Any) -> None:
    workers = celery_workers(n=2)
    t0 = time.monotonic()
    engine = run_pool(spec_for(200))
    elapsed = time.monotonic() - t0
    assert engine.counts() == Counter({"success": 200})
    assert values(engine) == {i: 2 * i for i in range(200)}
    hosts = engine.hosts()
    assert set(hosts) == set(range(200))
    assert set(hosts.values()) == {w.hostname for w in workers}, "both workers served entries"
    states = engine.states()
    assert all(s.attempt == 1 and s.started and s.finished >= s.started for s in states)
    print(f"200 entries on 2 workers: {elapsed:.2f} s")


def test_batched_entries_keep_their_own_state(fused_options: Any, celery_workers: Any) -> None:
    celery_workers(n=1, concurrency=2)
    code = """
    def f(x):
        import time
        print("entry", x)
        time.sleep(0.05)
        if x == 7:
            raise ValueError("seven")
        return x * 2
    """
    engine = run_pool(spec_for(30, udf(code), batch_size=10, max_retry=0))
    counts = engine.counts()
    assert counts == Counter({"success": 29, "error": 1})
    outs = engine.outcomes(range(30))
    assert outs[3]["logs"] == "entry 3\n"
    assert outs[7]["ok"] is False
    assert outs[7]["error"]["child_exception_class"] == "ValueError"
    assert outs[7]["error"]["lineno"] == 7  # the source starts with a blank line
    task_ids = engine.task_ids()
    assert len(set(task_ids.values())) == 3, "one task per batch of 10"
    # the 10 entries of a batch ran in parallel threads: their run times overlap
    states = engine.states()
    first = states[:10]
    assert max(s.started for s in first) < min(s.finished for s in first)


def test_automatic_retries_then_success(
    fused_options: Any, celery_workers: Any, tmp_path: Path
) -> None:
    celery_workers(n=1, concurrency=2)
    code = """
    def f(x, d):
        import pathlib
        marker = pathlib.Path(d) / str(x)
        runs = int(marker.read_text()) if marker.exists() else 0
        marker.write_text(str(runs + 1))
        if runs < 2:
            raise RuntimeError(f"flaky {runs}")
        return x
    """
    engine = run_pool(spec_for(4, udf(code), extra={"d": str(tmp_path)}, max_retry=2))
    assert engine.counts() == Counter({"success": 4})
    assert [s.attempt for s in engine.states()] == [3, 3, 3, 3]
    history = engine.record.history()
    assert {f"{p}:{a}" for p in range(4) for a in (1, 2)} == set(history)
    assert history["0:1"]["error"]["message"] == "flaky 0"


def test_retries_in_a_capped_pool_stay_in_their_lane(
    fused_options: Any, celery_workers: Any, tmp_path: Path
) -> None:
    celery_workers(n=2, concurrency=2)
    code = """
    def f(x, d):
        import pathlib, time
        marker = pathlib.Path(d) / str(x)
        time.sleep(0.05)
        if not marker.exists():
            marker.write_text("1")
            raise RuntimeError("first attempt fails")
        return x
    """
    engine = run_pool(spec_for(12, udf(code), extra={"d": str(tmp_path)}, max_workers=2))
    assert values(engine) == {i: i for i in range(12)}
    assert [s.attempt for s in engine.states()] == [2] * 12
    assert _peak_concurrency(engine) <= 2


def test_errors_are_final_after_max_retry_and_never_cached(
    fused_options: Any, celery_workers: Any
) -> None:
    celery_workers(n=1, concurrency=2)
    failing = udf("def f(x):\n    raise KeyError(x)\n")
    engine = run_pool(spec_for(3, failing, max_retry=1, cache=True))
    assert engine.counts() == Counter({"error": 3})
    assert all(s.attempt == 2 for s in engine.states())
    again = run_pool(spec_for(3, failing, max_retry=0, cache=True))
    assert again.counts() == Counter({"error": 3})
    assert set(again.hosts().values()) != {"cache"}, "an error was served from the cache"


def test_success_is_cached(fused_options: Any, celery_workers: Any) -> None:
    celery_workers(n=1, concurrency=2)
    first = run_pool(spec_for(5, cache=True))
    assert "cache" not in first.hosts().values()
    second = run_pool(spec_for(5, cache=True))
    assert set(second.hosts().values()) == {"cache"}
    assert values(second) == {i: 2 * i for i in range(5)}
    third = run_pool(spec_for(5, cache=False))
    assert "cache" not in third.hosts().values()


def test_cancel_keeps_pending_entries_from_running(fused_options: Any, celery_workers: Any) -> None:
    celery_workers(n=1, concurrency=1)
    slow = udf("def f(x):\n    import time\n    time.sleep(0.1)\n    return x\n")
    engine = make_engine("celery", spec_for(60, slow))
    engine.submit()
    wait_until(engine, lambda c: c["success"] >= 3)
    cancelled, running = engine.cancel()
    assert cancelled > 0 and running <= 1
    wait_finished(engine, 60)
    counts = engine.counts()
    assert counts["cancelled"] == cancelled
    assert counts["success"] + counts["cancelled"] == 60
    hosts = engine.hosts()
    states = engine.states()
    ran_after_cancel = [p for p, s in enumerate(states) if s.status == "cancelled" and p in hosts]
    assert ran_after_cancel == []
    assert engine.outcomes([p for p, s in enumerate(states) if s.status == "cancelled"]) == {}


def test_retry_failed_entries_as_new_attempts(
    fused_options: Any, celery_workers: Any, tmp_path: Path
) -> None:
    celery_workers(n=1, concurrency=2)
    code = """
    def f(x, d):
        import pathlib
        if x % 2 and not (pathlib.Path(d) / "ok").exists():
            raise ValueError("odd")
        return x
    """
    engine = run_pool(spec_for(6, udf(code), extra={"d": str(tmp_path)}, max_retry=0))
    assert engine.counts() == Counter({"success": 3, "error": 3})
    before = engine.task_ids()
    (tmp_path / "ok").write_text("")
    engine.retry([1, 3, 5])
    assert engine.retried_at is not None
    wait_finished(engine)
    assert engine.counts() == Counter({"success": 6})
    states = engine.states()
    assert [s.attempt for s in states] == [1, 2, 1, 2, 1, 2]
    after = engine.task_ids()
    assert all(after[p] != before[p] for p in (1, 3, 5))
    assert all(after[p] == before[p] for p in (0, 2, 4))
    assert values(engine) == {i: i for i in range(6)}


def test_attach_from_another_process(
    fused_options: Any, celery_workers: Any, redis_url: str, tmp_path: Path
) -> None:
    celery_workers(n=2)
    code = """
    def f(x, d):
        import pathlib, time
        while not (pathlib.Path(d) / "go").exists():
            time.sleep(0.02)
        print("run", x)
        if x == 3:
            raise ValueError("three")
        return x * 10
    """
    engine = make_engine("celery", spec_for(12, udf(code), extra={"d": str(tmp_path)}, max_retry=0))
    engine.submit()
    script = textwrap.dedent(f"""
        import json, time
        from fused_celery.engines.celery.client import CeleryEngine
        from fused_celery.engines.base import FINISHED
        from fused_celery import codec
        e = CeleryEngine.attach({engine.pool_id!r})
        assert e.spec.args[5] == {{"x": 5, "d": {str(tmp_path)!r}}}, e.spec.args[5]
        open({str(tmp_path / "go")!r}, "w").close()
        while sum(e.counts()[s] for s in FINISHED) < e.spec.n:
            e.wait_for_change(1.0)
        e.retry([3])
        time.sleep(0.2)
        while sum(e.counts()[s] for s in FINISHED) < e.spec.n:
            e.wait_for_change(1.0)
        outs = e.outcomes(range(e.spec.n))
        print(json.dumps({{
            "statuses": [s.status for s in e.states()],
            "values": {{p: codec.decode(o["value"]) for p, o in outs.items() if o["ok"]}},
            "logs": outs[0]["logs"],
            "attempt3": e.states()[3].attempt,
        }}))
    """)
    env = {
        **os.environ,
        "FUSED_CELERY_BROKER_URL": redis_url,
        "FUSED_CELERY_RESULT_BACKEND": redis_url,
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["statuses"].count("success") == 11
    assert seen["statuses"][3] == "error" and seen["attempt3"] == 2
    assert seen["logs"] == "run 0\n"
    wait_finished(engine)
    assert [s.status for s in engine.states()] == seen["statuses"]
    assert {str(p): v for p, v in values(engine).items()} == seen["values"]
    assert engine.states()[3].attempt == 2, "the retry made elsewhere is visible here"


@pytest.mark.parametrize("log_chars", [10, 20_000])
def test_small_pool_state_comes_with_its_event(
    fused_options: Any, celery_workers: Any, redis_url: str, tmp_path: Path, log_chars: int
) -> None:
    """A waiter of a small pool takes the finished state from the event that woke it (no read),
    unless it is too large for an event; either way it gets the same outcome, logs and times."""
    celery_workers(n=1)
    code = """
    def f(x, d, n):
        import pathlib, time
        while not (pathlib.Path(d) / "go").exists():
            time.sleep(0.01)
        print("x" * n)
        return x * 2
    """
    assert PoolEvents.for_url(redis_url).ready(5.0)
    engine = make_engine(
        "celery", spec_for(1, udf(code), extra={"d": str(tmp_path), "n": log_chars})
    )
    assert isinstance(engine, CeleryEngine)
    engine.submit()
    taken: list[Any] = []
    event_state = engine._event_state
    engine._event_state = lambda: taken.append(event_state()) or taken[-1]  # type: ignore
    assert engine.counts() == Counter({"pending": 1})  # as submitted: the entry waits for "go"
    (tmp_path / "go").touch()
    engine.wait_for_change(60.0)  # woken by the entry's finish event (its only event)
    assert engine.counts() == Counter({"success": 1})
    assert [bool(t) for t in taken] == [False, log_chars < EVENT_PAYLOAD_MAX_BYTES]
    [state] = engine.states()
    assert state.status == "success" and state.attempt == 1
    assert state.started is not None and state.finished is not None
    assert state.finished >= state.started
    out = engine.outcomes([0])[0]
    assert codec.decode(out["value"]) == 0 and out["logs"] == "x" * log_chars + "\n"


def test_small_pool_publishes_before_its_record_and_the_worker_waits_for_it(
    fused_options: Any, celery_workers: Any
) -> None:
    """A small pool's message goes out before its record is written; a worker that takes it
    first waits for the record (instead of dropping the message as the record of a pool gone)."""
    celery_workers(n=1)
    engine = make_engine("celery", spec_for(2))
    assert isinstance(engine, CeleryEngine)
    write = engine._write_record

    def late_write(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.5)  # the worker has the message by now
        write(*args, **kwargs)

    engine._write_record = late_write  # type: ignore[method-assign]
    engine.submit()
    wait_finished(engine, timeout=30)
    assert engine.counts() == Counter({"success": 2})
    assert values(engine) == {0: 0, 1: 2}


def test_instance_type_routes_to_its_queue(fused_options: Any, celery_workers: Any) -> None:
    [default] = celery_workers(n=1)
    [r5] = celery_workers(n=1, queues=("r5.large",))
    engine = run_pool(spec_for(20, queue="r5.large"))
    assert engine.counts() == Counter({"success": 20})
    assert set(engine.hosts().values()) == {r5.hostname}
    plain = run_pool(spec_for(5))
    assert set(plain.hosts().values()) == {default.hostname}


def test_large_results_go_to_storage(
    fused_options: Any, celery_workers: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "storage"
    celery_workers(
        n=1, env={"FUSED_CELERY_LARGE_RESULT_BYTES": "1000", "FUSED_CELERY_STORAGE_ROOT": str(root)}
    )
    big = udf("def f(x):\n    return 'x' * 5000 if x else b'\\x00' * 3000\n")
    engine = run_pool(spec_for(3, big))
    assert engine.counts() == Counter({"success": 3})
    client = redis.Redis.from_url(options.broker_url, decode_responses=True)
    stored = json.loads(client.hget(keys.pool_key(engine.pool_id, "outcome"), "1"))
    assert stored["value"] is None and stored["ref"]["url"].startswith(str(root))
    assert Path(stored["ref"]["url"]).stat().st_size == len('{"j":""}') + 5000
    assert values(engine) == {0: b"\x00" * 3000, 1: "x" * 5000, 2: "x" * 5000}


def test_max_workers_caps_entries_in_flight(fused_options: Any, celery_workers: Any) -> None:
    celery_workers(n=2, concurrency=2)
    slow = udf("def f(x):\n    import time\n    time.sleep(0.15)\n    return x\n")
    engine = run_pool(spec_for(24, slow, max_workers=2))
    assert engine.counts() == Counter({"success": 24})
    peak = _peak_concurrency(engine)
    assert peak == 2, f"at most 2 entries at once, saw {peak}"


def test_soft_time_limit_is_timeout(
    fused_options: Any, celery_workers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    celery_workers(n=1)
    # the limits of the submitting process travel with its messages
    monkeypatch.setattr(options, "task_soft_time_limit", 1.0)
    monkeypatch.setattr(options, "task_time_limit", 20.0)
    sleepy = udf("def f(x):\n    import time\n    if x:\n        time.sleep(10)\n    return x\n")
    engine = run_pool(spec_for(2, sleepy, max_retry=0), timeout=60)
    assert [s.status for s in engine.states()] == ["success", "timeout"]
    err = engine.outcomes([1])[1]["error"]
    assert err["type"] == "UdfTimeoutError" and "soft time limit" in err["message"]


def test_hard_time_limit_is_timeout(
    fused_options: Any, celery_workers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    celery_workers(n=1)
    monkeypatch.setattr(options, "task_soft_time_limit", 1.0)
    monkeypatch.setattr(options, "task_time_limit", 2.0)
    stubborn = udf("""
    def f(x):
        import time
        try:
            time.sleep(30)
        except BaseException:
            time.sleep(30)  # ignores the soft limit: the hard limit kills the process
    """)
    engine = run_pool(spec_for(1, stubborn, max_retry=0), timeout=60)
    assert [s.status for s in engine.states()] == ["timeout"]
    assert engine.outcomes([0])[0]["error"]["type"] == "UdfTimeoutError"


def test_entry_that_kills_its_process_fails_alone(fused_options: Any, celery_workers: Any) -> None:
    celery_workers(n=1, concurrency=2)
    poison = udf("def f(x):\n    import os\n    if x == 1:\n        os._exit(3)\n    return x\n")
    engine = run_pool(spec_for(4, poison, max_retry=0), timeout=120)
    assert [s.status for s in engine.states()] == ["success", "error", "success", "success"]
    err = engine.outcomes([1])[1]["error"]
    assert err["type"] == "UdfWorkerLostError" and "died 3 times" in err["message"]


def test_max_workers_with_batches(fused_options: Any, celery_workers: Any) -> None:
    celery_workers(n=2, concurrency=2)
    slow = udf("def f(x):\n    import time\n    time.sleep(0.1)\n    return x\n")
    engine = run_pool(spec_for(40, slow, batch_size=4, max_workers=2))
    assert values(engine) == {i: i for i in range(40)}
    assert _peak_concurrency(engine) <= 8  # 2 batches of 4 at a time
    assert len(set(engine.task_ids().values())) == 10


def _peak_concurrency(engine: Engine) -> int:
    states = engine.states()
    events = sorted(
        [(s.started, 1) for s in states] + [(s.finished, -1) for s in states],
        key=lambda e: (e[0], e[1]),
    )
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


def test_udf_that_cannot_be_decoded(fused_options: Any, celery_workers: Any) -> None:
    celery_workers(n=1)
    broken = udf("def f(x):\n    return (\n")
    engine = run_pool(spec_for(2, broken, max_retry=0))
    assert engine.counts() == Counter({"error": 2})
    err = engine.outcomes([0])[0]["error"]
    assert err["child_exception_class"] == "SyntaxError"


def test_lost_messages_are_republished_by_a_waiting_client(
    fused_options: Any, celery_workers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fused_celery.engines.celery import client as celery_engine
    from fused_celery.engines.celery.lost import find_lost
    from fused_celery.state.connection import redis_client

    monkeypatch.setattr(celery_engine, "LOST_CHECK_SECONDS", 0.5)
    engine = make_engine("celery", spec_for(30, max_workers=4))
    engine.submit()
    broker = redis_client(options.broker_url)
    assert find_lost(engine.record, broker, "fused") == {}, "queued messages are not lost"
    broker.delete("fused")  # as if Redis lost the messages (kombu's BRPOP/unacked race)
    lost = find_lost(engine.record, broker, "fused")
    assert sorted(lost) == [f"{engine.pool_id}.b{b}" for b in range(4)]
    celery_workers(n=1)
    wait_finished(engine, 60)
    assert values(engine) == {i: 2 * i for i in range(30)}, "lanes resumed after republishing"


# --------------------------------------------------------------------------- faults (slow)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("max_workers", "batch_size"),
    [(None, 1), (3, 1), (None, 10)],
    ids=["uncapped", "lanes", "batched"],
)
def test_sigkill_one_of_two_workers(
    fused_options: Any,
    celery_workers: Any,
    tmp_path: Path,
    max_workers: int | None,
    batch_size: int,
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    workers = celery_workers(n=2, concurrency=2, env={"FUSED_CELERY_VISIBILITY_TIMEOUT": "5"})
    code = f"""
    def f(x):
        import os, time
        with open(os.path.join({str(runs)!r}, str(x)), "a") as fh:
            fh.write("r")
        time.sleep(0.03)
        return x * 2
    """
    engine = make_engine(
        "celery", spec_for(500, udf(code), max_workers=max_workers, batch_size=batch_size)
    )
    t0 = time.monotonic()
    engine.submit()
    wait_until(engine, lambda c: c["success"] >= 100)
    workers[0].kill(signal.SIGKILL)
    wait_finished(engine, timeout=180)
    elapsed = time.monotonic() - t0
    assert engine.counts() == Counter({"success": 500})
    assert values(engine) == {i: 2 * i for i in range(500)}
    reruns = sum(len((runs / str(i)).read_text()) - 1 for i in range(500))
    print(f"SIGKILL test: {elapsed:.1f} s, {reruns} entries ran twice (redelivered)")
    assert reruns <= 8 * batch_size  # only what the killed worker held (running + prefetched)
    if max_workers:
        assert _peak_concurrency(engine) <= max_workers


@pytest.mark.slow
def test_redis_restart_mid_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fused_celery.cluster.local_cluster import child_env, wait_for_workers, worker_command
    from fused_celery.cluster.processes import ManagedProcess, stop_all

    server = AofRedis(tmp_path / "aof").start()
    url = server.url
    monkeypatch.setattr(options, "broker_url", url)
    monkeypatch.setattr(options, "result_backend", url)
    env = child_env(url, url, FUSED_CELERY_VISIBILITY_TIMEOUT="5")
    procs = [
        ManagedProcess(
            f"aof{i}@test",
            worker_command(f"aof{i}@test", concurrency=2),
            env=env,
            log_path=tmp_path / f"aof{i}.log",
        )
        for i in range(2)
    ]
    try:
        for proc in procs:
            proc.start()
        wait_for_workers(
            url,
            [f"aof{i}@test" for i in range(2)],
            timeout=90,
            processes={f"aof{i}@test": p for i, p in enumerate(procs)},
        )
        slow = udf("def f(x):\n    import time\n    time.sleep(0.02)\n    return x * 2\n")
        engine = make_engine("celery", spec_for(400, slow))
        engine.submit()
        wait_until(engine, lambda c: c["success"] >= 80)
        server.stop()  # SHUTDOWN: the append-only file is flushed
        time.sleep(1.0)
        server.start()  # same port
        before = {p for p, s in enumerate(engine.states()) if s.status == "success"}
        assert len(before) >= 80, "finished entries survived the restart"
        wait_finished(engine, timeout=180)
        assert engine.counts() == Counter({"success": 400})
        assert values(engine) == {i: 2 * i for i in range(400)}
    finally:
        stop_all(procs, timeout=10)
        server.stop()


@pytest.mark.slow
def test_cancel_then_restart_workers_runs_nothing_cancelled(
    fused_options: Any, celery_workers: Any
) -> None:
    workers = celery_workers(n=2, concurrency=1)
    slow = udf("def f(x):\n    import time\n    time.sleep(0.03)\n    return x\n")
    engine = make_engine("celery", spec_for(1000, slow))
    engine.submit()
    wait_until(engine, lambda c: c["success"] >= 50)
    cancelled, running = engine.cancel()
    assert cancelled > 800
    cancelled_positions = {p for p, s in enumerate(engine.states()) if s.status == "cancelled"}
    for worker in workers:
        worker.restart()  # revoke lists live in worker memory: gone now
    client = redis.Redis.from_url(options.broker_url)
    deadline = time.monotonic() + 60
    while client.llen("fused") and time.monotonic() < deadline:
        time.sleep(0.2)  # the restarted workers consume the revoked messages
    assert client.llen("fused") == 0
    wait_finished(engine)
    time.sleep(0.5)
    hosts = engine.hosts()
    assert not cancelled_positions & set(hosts), "a cancelled entry ran"
    counts = engine.counts()
    assert counts["cancelled"] == len(cancelled_positions)
    assert counts["success"] + counts["cancelled"] == 1000


def test_additional_env_validation() -> None:
    from fused_celery.worker_env import parse_additional_env

    assert parse_additional_env(["A=1", "B_2=x=y", "C="]) == {"A": "1", "B_2": "x=y", "C": ""}
    assert parse_additional_env(None) == {}
    assert parse_additional_env({"K": 3}) == {"K": "3"}
    for bad in (["NOEQUALS"], ["1A=x"], ["=x"], ["A B=1"]):
        with pytest.raises(ValueError, match="additional_env"):
            parse_additional_env(bad)
    with pytest.raises(ValueError, match="list of 'KEY=value'"):
        parse_additional_env("A=1")
