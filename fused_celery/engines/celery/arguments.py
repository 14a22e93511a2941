"""A remote pool's arguments as its Redis record stores them.

- Constant keyword arguments (``udf.map(..., **constants)``) are stored once, in the record's
  ``meta`` (field ``constants``), not copied into every entry of ``P:args``; workers merge them
  under each entry's own arguments (and cache them per process and pool).
- An argument or constant whose encoded size is over ``options.large_argument_bytes`` goes to
  storage (:func:`fused_celery.blobs.store_argument`, named by content under the pool's
  ``args`` folder); the record keeps a reference, which workers resolve.
- One over ``options.max_argument_bytes`` is refused with
  :class:`~fused_celery.errors.ArgumentTooLargeError` before anything is written.

Sizes are those of the canonical JSON the record would hold. A pool whose entries are all
smaller than the threshold pays one length check per entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fused_celery.errors import ArgumentTooLargeError
from fused_celery.state.pool_record import canonical_json


@dataclass
class StoredArguments:
    """What :func:`store_arguments` gives the record.

    entries: canonical JSON of each entry's own arguments (constants left out). constants: the
    stored constants (large ones as references). folder: where arguments went to storage, or
    "" when none did.
    """

    entries: list[str]
    constants: dict[str, Any] = field(default_factory=dict)
    folder: str = ""


def _too_large(what: str, key: str, size: int, limit: int) -> ArgumentTooLargeError:
    return ArgumentTooLargeError(
        f"{what} {key!r} is {size:,} bytes once encoded, over the limit of {limit:,} bytes "
        "(options.max_argument_bytes, FUSED_CELERY_MAX_ARGUMENT_BYTES); nothing was submitted. "
        "Write the data to storage (a file or s3:// URL) and pass its URL instead, or raise the "
        "limit"
    )


def store_arguments(
    encoded: Sequence[dict[str, Any]],
    constants: dict[str, Any],
    *,
    root: str,
    pool_id: str,
    threshold: int,
    limit: int,
) -> StoredArguments:
    """Split, check and offload a pool's encoded arguments (see the module docstring).

    encoded: each entry's encoded keyword arguments, constants included. constants: the
    encoded constants (keys present in every entry). root / pool_id: large arguments go to
    :func:`fused_celery.blobs.args_folder` of them. threshold / limit: ``large_argument_bytes`` /
    ``max_argument_bytes``. Raises :class:`ArgumentTooLargeError` (nothing written).
    """
    if constants:
        own = [{k: v for k, v in e.items() if k not in constants} for e in encoded]
    else:
        own = list(encoded)
    texts = [canonical_json(e) for e in own]
    large = [i for i, text in enumerate(texts) if len(text) > threshold]
    sizes = {k: len(canonical_json(v)) for k, v in constants.items()}
    for key, size in sizes.items():
        if size > limit:
            raise _too_large("constant keyword argument", key, size, limit)
    entry_sizes = {i: {k: len(canonical_json(v)) for k, v in own[i].items()} for i in large}
    for i, by_key in entry_sizes.items():
        for key, size in by_key.items():
            if size > limit:
                raise _too_large(f"entry {i}: argument", key, size, limit)
    out = StoredArguments(texts, dict(constants))
    written: dict[str, dict[str, Any]] = {}  # canonical JSON -> reference (stored once)

    def store(envelope: dict[str, Any]) -> dict[str, Any]:
        from fused_celery import blobs  # pyarrow: only when something is large

        out.folder = blobs.args_folder(root, pool_id)
        text = canonical_json(envelope)
        if text not in written:
            written[text] = blobs.store_argument(envelope, out.folder)
        return written[text]

    for key, size in sizes.items():
        if size > threshold:
            out.constants[key] = store(constants[key])
    for i, by_key in entry_sizes.items():
        entry = dict(own[i])
        for key, size in by_key.items():
            if size > threshold:
                entry[key] = store(entry[key])
        texts[i] = canonical_json(entry)
    return out
