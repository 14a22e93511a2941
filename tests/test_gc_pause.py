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


def test_a_process_forked_during_a_pause_collects_again() -> None:
    """The local engine forks its workers from ``submit``, which runs inside a pause."""
    import os

    with gc_pause.paused():
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its collector's switch, then leave at once
            os.write(write, b"1" if gc.isenabled() else b"0")
            os._exit(0)
        os.close(write)
        reported = os.read(read, 1)
        os.close(read)
        os.waitpid(pid, 0)
        assert not gc.isenabled()
    assert reported == b"1"
