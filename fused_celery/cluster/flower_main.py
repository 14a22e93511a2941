"""Flower with its Prometheus ``/metrics`` behind the same authentication as its pages.

Flower 2.x serves ``/metrics`` (and ``/healthcheck``) to anyone, even with ``--basic-auth``: the
handler is not marked ``@tornado.web.authenticated``. ``/metrics`` names every worker, task
type and queue. :func:`protect_metrics` marks it, so that with basic auth a request without the
right ``Authorization`` header gets 401 (Prometheus scrapes it with ``basic_auth`` in its scrape
config); without any auth configured it stays open (``--no-auth``, loopback only). The liveness
page ``/healthcheck`` stays open.

Run as ``python -m fused_celery.cluster.flower_main -A fused_celery.celery_app flower ...``
(see :func:`fused_celery.cluster.local_cluster.flower_command`): the ``celery`` command with
the handler patched first. Flower's password comes from the environment (``FLOWER_BASIC_AUTH``),
never from the command line.
"""

from __future__ import annotations

import sys


def protect_metrics() -> None:
    """Require Flower's authentication on ``/metrics`` (idempotent)."""
    import tornado.web
    from flower.views import monitor

    handler = monitor.Metrics
    if getattr(handler.get, "_fused_celery_protected", False):
        return
    protected = tornado.web.authenticated(handler.get)
    protected._fused_celery_protected = True  # type: ignore[attr-defined]
    handler.get = protected  # type: ignore[method-assign]


def main() -> None:
    """The ``celery`` command (arguments from ``sys.argv``) with ``/metrics`` protected."""
    protect_metrics()
    from celery.bin.celery import main as celery_main

    sys.exit(celery_main())


if __name__ == "__main__":
    main()
