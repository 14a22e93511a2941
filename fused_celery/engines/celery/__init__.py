"""The Celery engine: :mod:`.client` (``CeleryEngine``, the pool's client side), :mod:`.worker`
(a message's life on a worker), :mod:`.tasks` (the thin task definition) and :mod:`.lost`
(messages the broker lost, found in kombu's unacked hash) and :mod:`.liveness` (workers'
heartbeats, and the messages of dead workers given back to their queue)."""
