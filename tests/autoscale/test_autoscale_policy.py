"""The scaling policy's properties, checked with hypothesis over random backlogs and settings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fused_celery.autoscale.policy import Backlog, GroupSettings, GroupState, decide, floor_of

group_settings = st.builds(
    lambda lo, extra, slots, tb, step, cool, idle: GroupSettings(
        min_size=lo,
        max_size=lo + extra,
        slots=slots,
        target_backlog_per_slot=tb,
        scale_out_step=step,
        scale_in_cooldown=cool,
        idle_before_zero=idle,
    ),
    st.integers(0, 3),
    st.integers(0, 20),
    st.integers(1, 8),
    st.sampled_from([0.5, 1.0, 2.0, 4.0]),
    st.integers(0, 5),
    st.floats(0, 100),
    st.floats(0, 500),
)
backlogs = st.builds(
    Backlog,
    ready=st.integers(0, 500),
    in_flight=st.integers(0, 100),
    pool_slots=st.integers(0, 500),
    busy_workers=st.integers(0, 30),
)
states = st.builds(
    GroupState,
    current=st.integers(0, 30),
    last_change=st.one_of(st.none(), st.floats(0, 1000)),
    idle_since=st.one_of(st.none(), st.floats(0, 1000)),
)


@given(backlogs, states, group_settings, st.floats(1000, 2000))
def test_never_above_max_nor_below_running_work(backlog, state, cfg, now):
    decision = decide(backlog, state, cfg, now)
    assert 0 <= decision.desired <= cfg.max_size
    assert decision.desired >= min(cfg.max_size, floor_of(backlog, cfg))
    assert decision.state.current == decision.desired


@settings(max_examples=200)
@given(backlogs, st.integers(0, 30), group_settings, st.floats(0.5, 60))
def test_steady_backlog_does_not_flap(backlog, start, cfg, interval):
    """The same backlog, cycle after cycle: the capacity moves one way, then stays."""
    state = GroupState(current=start)
    seen = []
    now = 0.0
    for _ in range(60):
        decision = decide(backlog, state, cfg, now)
        seen.append(decision.desired)
        state = decision.state
        now += interval
    steps = [b - a for a, b in zip(seen, seen[1:]) if b != a]
    assert all(s > 0 for s in steps) or all(s < 0 for s in steps), seen
    tail = seen[-5:] if cfg.scale_out_step == 0 else seen[-1:]
    assert len(set(tail)) == 1


@given(st.integers(0, 30), group_settings, st.floats(0.5, 30))
def test_back_to_min_after_idle_time(start, cfg, interval):
    """No work at all: the capacity stays until idle_before_zero has passed, then goes to
    min_size (once the cooldown since the last change has passed too)."""
    start = max(cfg.min_size, min(start, cfg.max_size))
    state = GroupState(current=start, last_change=0.0)
    now = 0.0
    end = max(cfg.idle_before_zero, cfg.scale_in_cooldown) + interval
    while now <= end:
        decision = decide(Backlog(), state, cfg, now)
        if now < cfg.idle_before_zero:
            assert decision.desired == start
        state = decision.state
        now += interval
    assert state.current == cfg.min_size


def test_scale_out_step_and_zero_to_n():
    cfg = GroupSettings(max_size=10, slots=2, scale_out_step=3)
    state = GroupState()
    first = decide(Backlog(ready=100), state, cfg, 0.0)
    assert first.desired == 3 and first.target == 50
    second = decide(Backlog(ready=100), first.state, cfg, 1.0)
    assert second.desired == 6


def test_busy_workers_hold_scale_in_and_zero_waits_for_idle():
    cfg = GroupSettings(max_size=10, scale_in_cooldown=0.0, idle_before_zero=30.0)
    state = GroupState(current=4, last_change=0.0)
    busy = decide(Backlog(in_flight=3, busy_workers=3), state, cfg, 10.0)
    assert busy.desired == 3
    idle = decide(Backlog(), busy.state, cfg, 20.0)
    assert idle.desired == 3 and idle.state.idle_since == 20.0
    gone = decide(Backlog(), idle.state, cfg, 50.0)
    assert gone.desired == 0
    assert decide(Backlog(ready=1), gone.state, cfg, 51.0).state.idle_since is None


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="min_size"):
        GroupSettings(min_size=3, max_size=2)


def test_cost_report_divides_by_slots_and_prices_by_type():
    from fused_celery.autoscale.cost import CostRow, cost_report, instance_seconds

    rows = [CostRow("m5.large", 3600.0, 2), CostRow("m5.large", 1800.0, 1), CostRow(None, 5.0)]
    seconds = instance_seconds(rows)
    assert seconds == {"m5.large": 3600.0, "unknown": 5.0}
    report = cost_report(seconds, {"m5.large": 0.096})
    assert report["total_usd"] == pytest.approx(0.096)
    assert report["by_instance_type"]["m5.large"]["usd"] == pytest.approx(0.096)
    assert report["unpriced"] == ["unknown"]
