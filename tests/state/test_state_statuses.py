"""Statuses are declared once (``fused_celery.state.statuses``): Python re-exports them, the Lua
scripts get them from the generated prologue and spell none."""

from __future__ import annotations

import re

import redis

from fused_celery.engines import base
from fused_celery.state import job_record, scripts, statuses
from fused_celery.state.scripts import Script


def test_entry_and_job_statuses() -> None:
    s = statuses
    assert s.ENTRY_STATUSES == (s.PENDING, s.RUNNING, s.SUCCESS, s.ERROR, s.TIMEOUT, s.CANCELLED)
    assert set(s.ENTRY_STATUSES) - {s.PENDING, s.RUNNING} == s.ENTRY_FINISHED
    assert s.ENTRY_FAILED < s.ENTRY_WITH_OUTCOME < s.ENTRY_FINISHED
    assert s.ENTRY_FINISHED - {s.CANCELLED} == s.ENTRY_WITH_OUTCOME
    assert s.JOB_STATUSES[:2] == (s.JOB_PENDING, s.JOB_RUNNING)
    assert set(s.JOB_STATUSES[2:]) == s.JOB_TERMINAL


def test_old_names_are_the_declared_ones() -> None:
    assert base.STATUSES is statuses.ENTRY_STATUSES
    assert statuses.ENTRY_STATUSES[:3] == (base.PENDING, base.RUNNING, base.SUCCESS)
    assert statuses.ENTRY_STATUSES[3:] == (base.ERROR, base.TIMEOUT, base.CANCELLED)
    assert base.FINISHED is statuses.ENTRY_FINISHED and base.FAILED is statuses.ENTRY_FAILED
    assert job_record.JOB_STATUSES is statuses.JOB_STATUSES
    assert job_record.TERMINAL is statuses.JOB_TERMINAL


def test_no_lua_file_spells_a_status() -> None:
    names = (*statuses.ENTRY_STATUSES, *statuses.JOB_STATUSES)
    for script in scripts.SCRIPTS:
        for filename in (script.filename, *(f"_{h}.lua" for h in script.uses)):
            text = scripts.read_file(filename)
            for name in names:
                assert not re.search(rf"['\"]{name}['\"]", text), (filename, name)


def test_lua_tables_match_the_declaration(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    probe = Script(
        "test_statuses",
        keys=(),
        body="""
        local finished, terminal = {}, {}
        for _, s in ipairs(ENTRY_STATUSES) do
          if ENTRY_FINISHED[s] then finished[#finished + 1] = ENTRY[s] end
        end
        for name, value in pairs(JOB) do
          if JOB_TERMINAL[name] then terminal[#terminal + 1] = value end
        end
        table.sort(terminal)
        return {ENTRY_STATUSES, finished, terminal}
        """,
    )
    entry, finished, terminal = probe(client, keys={})
    assert tuple(entry) == statuses.ENTRY_STATUSES
    assert finished == [s for s in statuses.ENTRY_STATUSES if s in statuses.ENTRY_FINISHED]
    assert terminal == sorted(statuses.JOB_TERMINAL)
