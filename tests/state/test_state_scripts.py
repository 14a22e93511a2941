"""The Lua script registry (``fused_celery.state.scripts``) against the real test Redis."""

from __future__ import annotations

import re
import threading
from importlib import resources
from typing import Any

import pytest
import redis

from fused_celery.state import scripts
from fused_celery.state.scripts import Script


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def lua_files() -> set[str]:
    folder = resources.files("fused_celery.state.scripts")
    return {entry.name for entry in folder.iterdir() if entry.name.endswith(".lua")}


def test_every_file_is_declared_and_every_declaration_has_its_file() -> None:
    files = lua_files()
    bodies = {s.filename for s in scripts.SCRIPTS}
    helpers = {f"_{h}.lua" for s in scripts.SCRIPTS for h in s.uses}
    assert bodies <= files, "a declared script without its .lua file"
    assert helpers <= files, "a declared helper without its .lua file"
    assert files == bodies | helpers, "a .lua file that no declaration uses"
    assert all(not f.startswith("_") for f in bodies) and all(f.startswith("_") for f in helpers)
    assert len(scripts.BY_NAME) == len(scripts.SCRIPTS), "two scripts with one name"


def test_files_are_read_as_package_data() -> None:
    text = resources.files("fused_celery.state.scripts").joinpath("pool_start.lua").read_text()
    assert scripts.read_file("pool_start.lua") == text
    assert text in scripts.pool_start.source


def test_lua_names_only_what_is_declared() -> None:
    """A body reads KEYS and ARGV through K and A (never by position), and only declared names;
    the helpers likewise."""
    for script in scripts.SCRIPTS:
        helpers = "".join(scripts.read_file(f"_{h}.lua") for h in script.uses)
        body = scripts.read_file(script.filename)
        for text in (body, helpers):
            assert not re.search(r"(KEYS|ARGV)\[\d", text), script.name
        used_keys = set(re.findall(r"\bK\.(\w+)", body + helpers))
        used_args = set(re.findall(r"\bA\.(\w+)", body + helpers))
        used_fields = set(re.findall(r"\bR\.(\w+)", body + helpers))
        assert used_keys <= set(script.keys), (script.name, used_keys - set(script.keys))
        assert used_args <= set(script.argv), (script.name, used_args - set(script.argv))
        assert used_fields <= set(script.rest_fields), script.name
        assert ("REST" in body) == (script.rest is not None), script.name


def test_every_declared_script_loads(client: redis.Redis) -> None:
    for script in scripts.SCRIPTS:
        sha = client.script_load(script.source)  # compiles: a syntax error raises
        assert sha == scripts.loaded_for(client)[script].sha, script.name


def test_names_map_to_their_positions(client: redis.Redis) -> None:
    echo = Script(
        "test_echo",
        keys=("a", "b"),
        argv=("x", "y"),
        rest=("pairs", ("p", "q")),
        body="""
        local out = {K.a, K.b, A.x, A.y, tostring(REST), tostring(REST_WIDTH)}
        for i = REST, #ARGV, REST_WIDTH do
          out[#out + 1] = ARGV[i + R.p] .. '=' .. ARGV[i + R.q]
        end
        return out
        """,
    )
    keys = {"b": "key-b", "a": "key-a", "unused": "ignored"}
    args: dict[str, Any] = {"y": "Y", "pairs": [(1, 2), ("u", "v")], "x": "X"}
    assert echo.flatten(keys, args) == (["key-a", "key-b"], ["X", "Y", 1, 2, "u", "v"])
    assert echo(client, keys=keys, args=args) == [
        "key-a",
        "key-b",
        "X",
        "Y",
        "3",
        "2",
        "1=2",
        "u=v",
    ]
    assert echo(client, keys=keys, args={**args, "pairs": []})[6:] == []


def test_missing_or_unexpected_names_are_refused(client: redis.Redis) -> None:
    keys = {"meta": "m", "logs": "l"}
    with pytest.raises(TypeError, match="no value for 'seq'"):
        scripts.job_logs_after(client, keys=keys, args={})
    with pytest.raises(TypeError, match=r"unexpected arguments \['sek'\]"):
        scripts.job_logs_after(client, keys=keys, args={"seq": 0, "sek": 1})
    with pytest.raises(TypeError, match="no value for 'logs'"):
        scripts.job_logs_after(client, keys={"meta": "m"}, args={"seq": 0})
    with pytest.raises(TypeError, match=r"must be \(pos, attempt, task_id\)"):
        scripts.pool_retry.flatten(
            dict.fromkeys(scripts.pool_retry.keys, "k"),
            {"now": 0, "channel": "c", "entries": [(1, 2)]},
        )
    with pytest.raises(ValueError, match="not usable"):
        Script("bad", keys=("end",))
    with pytest.raises(ValueError, match="declared twice"):
        Script("bad", keys=("a", "a"))


def test_noscript_after_flush_reloads(client: redis.Redis) -> None:
    keys = {"meta": "m", "logs": "l"}
    assert scripts.job_logs_after(client, keys=keys, args={"seq": 0}) == [0]
    client.script_flush()
    assert not client.script_exists(scripts.loaded_for(client)[scripts.job_logs_after].sha)[0]
    assert scripts.job_logs_after(client, keys=keys, args={"seq": 0}) == [0]  # NOSCRIPT: loaded
    client.script_flush()
    pipe = client.pipeline(transaction=True)  # a pipeline loads what it misses before EXEC
    pipe.hset("m", "log_seq", "2")
    pipe.rpush("l", "a", "b")
    scripts.job_logs_after(pipe, keys=keys, args={"seq": 1})
    assert pipe.execute()[-1] == [2, "b"]


def test_one_registration_per_connection_pool_across_threads(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    before = scripts.registrations
    barrier = threading.Barrier(8)
    seen: list[int] = []

    def register() -> None:
        barrier.wait()
        seen.append(id(scripts.loaded_for(client)))
        seen.append(id(scripts.loaded_for(client.pipeline())))  # pipelines share their client's

    threads = [threading.Thread(target=register) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 16 and len(set(seen)) == 1
    assert scripts.registrations == before + 1
    other = redis.Redis.from_url(redis_url)  # another client: registered on its own
    assert scripts.loaded_for(other) is not scripts.loaded_for(client)
    assert scripts.registrations == before + 2
