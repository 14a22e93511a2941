"""The queue-depth autoscaler: per queue, from 0 to N workers and back to 0.

``policy`` (pure: backlog to desired capacity), ``metrics`` (the backlog from Redis, one round
trip), ``actuators`` (EC2 Auto Scaling groups, or local worker processes), ``loop`` (the
``fused-celery autoscale`` command), ``drain`` (a worker leaving: metadata notices, lifecycle
actions) and ``cost`` (per-job cost by instance type).
"""
