"""The pool record's message scripts (``pool_start.lua``, ``pool_finish.lua``) on a message of
more entries than one gathered ``HSET`` takes (``_pool_entry.lua``'s ``STAGE_CHUNK``), against
the real private ``redis-server`` of ``conftest.py``."""

from __future__ import annotations

import json
import uuid

import pytest

from fused_celery.state import pool_record
from fused_celery.state.pool_record import PoolRecord, parse_state

N = 1_200  # entries in one message: 2,400 field/value pairs per hash, three HSET calls each


def _record(n: int) -> PoolRecord:
    record = PoolRecord(uuid.uuid4().hex, _url())
    meta = {"version": 1, "udf": "{}", "n": n, "batch_size": n, "threads": 1, "max_retry": 0}
    record.create(meta=meta, encoded_args=[json.dumps({"x": i}) for i in range(n)],
                  batch_size=n, lanes=0)  # fmt: skip
    return record


def _url() -> str:
    from fused_celery.options import options

    assert options.broker_url
    return options.broker_url


def test_a_large_message_starts_and_finishes_every_entry(fused_options: object) -> None:
    record = _record(N)
    started = record.start(
        task_id=f"{record.pool_id}.b0", redelivered=False, host="w@h",
        entries=[(p, 1) for p in range(N)],
    )  # fmt: skip
    assert not isinstance(started, str)
    decisions, _ = started
    assert [(p, d) for p, d, *_ in decisions] == [(p, "run") for p in range(N)]
    assert [json.loads(a) for _, _, a, _ in decisions] == [{"x": p} for p in range(N)]
    assert record.counts() is not None and record.counts().get("running") == N
    assert record.hosts() == dict.fromkeys(range(N), "w@h")

    half = N // 2
    results = [
        {"pos": p, "attempt": 1, "status": "success" if p < half else "error",
         "json": json.dumps({"ok": p < half, "value": p}), "logs": f"log {p}",
         "started": 1.0, "finished": 2.0}
        for p in range(N)
    ]  # fmt: skip
    meta = {"n": str(N), "batch_size": str(N)}
    record.finish(results=results, meta=meta, lane=None, redelivered=False, chain=False)
    counts = record.counts()
    assert counts is not None
    assert (counts.get("success"), counts.get("error"), counts.get("running")) == (half, half, 0)
    states, outcomes, logs = record.read_outcomes(range(N))
    assert [parse_state(s)[0] for s in states] == ["success"] * half + ["error"] * half
    assert [o["value"] for o in outcomes] == list(range(N))
    assert logs == [f"log {p}" for p in range(N)]


def test_large_reads_equal_the_round_trip_reads(
    fused_options: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``read_outcomes`` of many positions (the ``pool_read`` script, here in chunks of 500)
    and ``read_states(large=True)`` (``pool_states``) give what the pipelined reads give,
    missing fields as None; a record that is gone reads as version None."""
    record = _record(N)
    started = record.start(
        task_id=f"{record.pool_id}.b0", redelivered=False, host="w@h",
        entries=[(p, 1) for p in range(0, N, 2)],
    )  # fmt: skip
    assert not isinstance(started, str)
    results = [
        {"pos": p, "attempt": 1, "status": "success", "json": json.dumps({"v": p}),
         "logs": "", "started": 1.0, "finished": 2.0}
        for p in range(0, N, 4)
    ]  # fmt: skip
    record.finish(results=results, meta={"n": str(N)}, lane=None, redelivered=False, chain=False)
    positions = [*range(N), N + 5]  # the last one was never an entry
    monkeypatch.setattr(pool_record, "READ_SCRIPT_MIN", 10**9)
    small = record.read_outcomes(positions)
    monkeypatch.setattr(pool_record, "READ_SCRIPT_MIN", 256)
    monkeypatch.setattr(pool_record, "READ_CHUNK", 500)
    assert record.read_outcomes(positions) == small
    assert small[0][-1] is None and small[1][1] is None and small[1][0] is not None
    assert record.read_states(large=True) == record.read_states()
    record.delete()
    assert record.read_states(large=True) == (None, {}) == record.read_states()


@pytest.mark.parametrize(
    "positions",
    [[4, 5, 6, 7], [4, 6, 5, 7], [5, 4, 6, 7, 8], [5, 4, 7], [3, 9, 4], [6], [4, 5, 7, 8]],
    ids=["consecutive", "out-of-order", "first-not-lowest", "span-fits", "gaps", "one", "a-gap"],
)
def test_start_hands_out_each_entrys_own_arguments(
    fused_options: object, positions: list[int]
) -> None:
    """``pool_start`` reads a run of consecutive positions with one ``LRANGE`` and any other
    message entry by entry: either way each entry gets its own arguments, and a cancelled
    entry is cancelled while its message-mates run."""
    record = _record(12)
    if len(positions) > 1:  # the last one cancelled alone (as ``pool_cancel`` marks entries)
        record.client.sadd(record.keys["cancelled"], positions[-1])
    started = record.start(
        task_id=f"{record.pool_id}.m", redelivered=False, host="w@h",
        entries=[(p, 1) for p in positions],
    )  # fmt: skip
    assert not isinstance(started, str)
    decisions, _ = started
    assert [p for p, *_ in decisions] == positions
    for p, decision, args, _ in decisions:
        if len(positions) > 1 and p == positions[-1]:
            assert (decision, args) == ("cancelled", "")
        else:
            assert decision == "run"
            assert json.loads(args) == {"x": p}


def test_the_last_finish_and_a_final_cancel_announce_done(fused_options: object) -> None:
    """``pool_finish`` publishes ``"<version>:done"`` when it leaves no entry pending or running
    (and a plain version before that); ``pool_cancel`` likewise when nothing else runs."""
    from fused_celery.state import keys

    n = 10  # above events.SMALL_POOL_ENTRIES: events carry versions, not the state
    record = _record(n)
    pubsub = record.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.events_channel(record.pool_id))
    pubsub.get_message(timeout=1.0)  # the subscription's confirmation

    def next_event() -> str:
        message = pubsub.get_message(timeout=5.0)
        assert message is not None
        return str(message["data"])

    started = record.start(task_id=f"{record.pool_id}.m", redelivered=False, host="w@h",
                           entries=[(p, 1) for p in range(n)])  # fmt: skip
    assert not isinstance(started, str)
    meta = {"n": str(n), "batch_size": str(n)}

    def finish(positions: list[int]) -> None:
        results = [
            {"pos": p, "attempt": 1, "status": "success", "json": json.dumps({"ok": True}),
             "logs": "", "started": 1.0, "finished": 2.0}
            for p in positions
        ]  # fmt: skip
        record.finish(results=results, meta=meta, lane=None, redelivered=False, chain=False)

    finish(list(range(n - 1)))
    assert not next_event().endswith(":done")
    finish([n - 1])
    assert next_event().endswith(":done")

    other = _record(n)
    pubsub.subscribe(keys.events_channel(other.pool_id))
    pubsub.get_message(timeout=1.0)
    other.start(task_id=f"{other.pool_id}.m", redelivered=False, host="w@h", entries=[(0, 1)])
    assert other.cancel()[:2] == (n - 1, 1)  # one entry still runs: not done
    assert not next_event().endswith(":done")
    idle = _record(n)
    pubsub.subscribe(keys.events_channel(idle.pool_id))
    pubsub.get_message(timeout=1.0)
    assert idle.cancel()[:2] == (n, 0)  # nothing ran: every entry is final now
    assert next_event().endswith(":done")
    pubsub.close()
