"""``gc_pause.paused``: the collector is off inside, back on after, pauses nest across threads,
and a collector the user turned off stays off."""

from __future__ import annotations

import gc
import threading

import pytest

from fused_celery import gc_pause


@pytest.fixture(autouse=True)
def _collector_on() -> object:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_off_inside_on_after_even_when_the_block_raises() -> None:
    with gc_pause.paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(KeyError), gc_pause.paused():
        raise KeyError("x")
    assert gc.isenabled()


def test_nested_and_overlapping_pauses_end_with_the_last() -> None:
    inside, leave = threading.Event(), threading.Event()

    def other() -> None:
        with gc_pause.paused():
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=other)
    with gc_pause.paused():
        thread.start()
        assert inside.wait(10)
        with gc_pause.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread's pause still holds
    leave.set()
    thread.join(10)
    assert gc.isenabled()


def test_a_collector_turned_off_by_the_user_stays_off() -> None:
    gc.disable()
    with gc_pause.paused():
        assert not gc.isenabled()
    assert not gc.isenabled()
