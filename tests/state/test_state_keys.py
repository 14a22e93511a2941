"""The key layout (``fused_celery.state.keys``) is documented and used by the scripts."""

from __future__ import annotations

from fused_celery.state import keys, scripts


def test_key_names_are_documented() -> None:
    doc = keys.__doc__ or ""
    for part in keys.PARTS:
        assert f"``P:{part}``" in doc, part
    for part in keys.JOB_PARTS:
        assert f"``J:{part}``" in doc, part
    assert keys.pool_key("abc", "state") == "fc:pool:abc:state"
    assert keys.job_key("abc", "meta") == "fc:job:abc:meta"


def test_scripts_name_record_parts() -> None:
    extra = {"tomb", "pools"}
    for script in scripts.SCRIPTS:
        if script.name.startswith("pool_"):
            assert set(script.keys) <= set(keys.PARTS) | extra, script.name
        elif script.name.startswith("autoscale_"):  # the pools index, kombu's unacked hash, a lock
            assert set(script.keys) <= {"pools", "unacked", "lock"}, script.name
        else:
            assert set(script.keys) <= set(keys.JOB_PARTS) | {"jobs"}, script.name
    assert scripts.pool_create.keys == (*keys.PARTS, "tomb", "pools")
