"""The package version, in one place (``fused_celery.__version__``; the table writer records it)."""

__version__ = "0.1.0"

#: The task-message protocol: every task message carries it (header :data:`PROTOCOL_HEADER`),
#: and a worker refuses a message whose protocol differs from its own. Bump it whenever a task's
#: arguments, the pool/job records the tasks read, or their meaning change incompatibly.
PROTOCOL_VERSION = 1

#: The message header carrying :data:`PROTOCOL_VERSION` (and :data:`VERSION_HEADER` the sender's
#: package version, for the error message).
PROTOCOL_HEADER = "fused_protocol"
VERSION_HEADER = "fused_version"
