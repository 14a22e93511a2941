"""take_rows: the same table as Arrow's take, for every kind of column it treats apart."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fused_celery.partition.take import take_rows


def _table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    wkb = [bytes(rng.integers(0, 256, 21, dtype=np.uint8)) for _ in range(n)]
    return pa.table(
        {
            "wkb": pa.array(wkb, pa.binary()),
            "large_wkb": pa.array(wkb, pa.large_binary()),
            "labels": pa.array(rng.choice(["a", "bb", "", "dddd"], n), pa.large_string()),
            "labels_null": pa.array([None if i % 7 == 0 else "x" for i in range(n)]),
            "many": pa.array([str(i) for i in range(n)]),
            "one_width": pa.array([f"{i:08d}" for i in range(n)]),
            "mixed_width": pa.array([b"ab" if i % 2 else b"abc" for i in range(n)]),
            "floats": pa.array(rng.normal(size=n)),
            "empty": pa.array([""] * n),
        }
    ).replace_schema_metadata({b"fc:geometry": b"wkb"})


@pytest.mark.parametrize("shape", ["whole", "sliced", "chunked", "small"])
@pytest.mark.parametrize("order", ["permutation", "repeats", "reversed_part", "none"])
def test_take_rows_equals_arrow_take(shape, order):
    table = _table(9000)
    table = {
        "whole": table,
        "sliced": table.slice(7, 8000),
        "chunked": pa.concat_tables([table.slice(0, 3001), table.slice(3001)]),
        "small": table.slice(0, 100),
    }[shape]
    rng = np.random.default_rng(1)
    n = table.num_rows
    idx = {
        "permutation": rng.permutation(n),
        "repeats": rng.integers(0, n, 2 * n),
        "reversed_part": np.arange(n)[::-1][: n // 2],
        "none": np.zeros(0, np.int64),
    }[order]
    got = take_rows(table, idx)
    want = table.take(pa.array(idx, pa.int64()))
    assert got.schema == want.schema and got.schema.metadata == want.schema.metadata
    for name in table.column_names:
        assert got.column(name).equals(want.column(name)), name
        assert got.column(name).num_chunks == 1
