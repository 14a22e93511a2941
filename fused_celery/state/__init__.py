"""Everything a pool or a job keeps in Redis.

- :mod:`~fused_celery.state.keys`: every key name, type and lifetime (the one place naming them).
- :mod:`~fused_celery.state.statuses`: entry and job statuses, declared once.
- :mod:`~fused_celery.state.connection`: shared clients, reachability checks, URL masking.
- :mod:`~fused_celery.state.events`: the pool events channel and its shared listener.
- :mod:`~fused_celery.state.scripts`: the Lua scripts (``scripts/*.lua``) and their registry.
- :mod:`~fused_celery.state.pool_record` / :mod:`~fused_celery.state.job_record`: the records.

This package imports redis, :mod:`fused_celery.options`, :mod:`fused_celery.errors` and its own
modules; nothing here knows Celery or kombu, or imports the engines, pools or jobs above it.
"""
