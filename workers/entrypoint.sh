#!/bin/sh
# Worker container entrypoint: one Celery worker serving the queue of $INSTANCE_TYPE (or the
# default queue "fused" when it is empty). `exec` replaces this shell with the worker (which in
# turn execs Celery), so the SIGTERM of `docker stop` / an ASG scale-in reaches Celery itself: a warm
# shutdown (no new tasks, running ones finish; acks_late redelivers any that cannot).
set -eu
if [ -n "${INSTANCE_TYPE:-}" ]; then
    exec fused-celery worker --instance-type "$INSTANCE_TYPE" \
        ${WORKER_CONCURRENCY:+--concurrency "$WORKER_CONCURRENCY"} "$@"
fi
exec fused-celery worker ${WORKER_CONCURRENCY:+--concurrency "$WORKER_CONCURRENCY"} "$@"
