"""``show`` of a join step: both inputs on one offline HTML map, the chunk pairs the join reads
highlighted.

Chunk bboxes are drawn in four groups: left chunks that meet a right chunk (``left (joined)``),
the other left chunks (``left``), and the same for the right side; a right single file has no
chunks, so only its sample rows are drawn (group ``right``). Sample rows of both sides are
drawn in their side's colour. The overlap plan itself is the caller's (the join step's): this
module draws frames, through :func:`fused_celery.maps.render.build_map` as ``Table.show()``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from fused_celery.maps.output import MapFile
from fused_celery.maps.render import Group
from fused_celery.maps.table_map import DEFAULT_SAMPLE_ROWS, _render, _spread, _to_wgs84

if TYPE_CHECKING:
    import geopandas as gpd

SIDE = "side"
LEFT, LEFT_JOINED, RIGHT, RIGHT_JOINED = "left", "left (joined)", "right", "right (joined)"


def _sided(chunks: gpd.GeoDataFrame, joined: set[tuple[str, int]], side: str) -> Any:
    keys = list(zip(chunks["file_id"].astype(str), chunks["chunk_id"].astype(int)))
    out = chunks[["num_rows", chunks.geometry.name]].copy()
    out["chunk_id"] = [f"{f}/{c}" for f, c in keys]
    out[SIDE] = [f"{side} (joined)" if k in joined else side for k in keys]
    return out


def show_join(
    left_chunks: gpd.GeoDataFrame,
    left_rows: gpd.GeoDataFrame,
    right_chunks: gpd.GeoDataFrame | None,
    right_rows: gpd.GeoDataFrame,
    pairs: list[tuple[tuple[str, int], tuple[str, int]]],
    path: str | os.PathLike[str] | None = None,
    *,
    name: str = "join",
    subtitle: str = "",
    right_total_rows: int | None = None,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    title: str | None = None,
    tiles: str | None = None,
    tiles_attribution: str | None = None,
) -> MapFile:
    """Write the map of a join and return it.

    left_chunks / right_chunks: the chunk metadata frames (``get_chunks_metadata``; right None
    for a single file). left_rows / right_rows: sample rows (any CRS; drawn up to
    ``sample_rows`` each, default 1000). pairs: the ``((left file, chunk), (right file,
    chunk))`` pairs the join reads (a single file's right key is ``("file", 0)``). path: the
    HTML file (default ``<storage_root>/maps/<name>.html``). name: file stem and default title
    (default ``"join"``). subtitle: under the title (default none). right_total_rows: rows of
    a right single file (default ``len(right_rows)``). tiles / tiles_attribution: as
    :func:`fused_celery.maps.table_map.show_table`.
    """
    import geopandas as gpd
    import pandas as pd

    joined_left = {p[0] for p in pairs}
    joined_right = {p[1] for p in pairs}
    frames = [_sided(left_chunks, joined_left, LEFT)]
    if right_chunks is not None:
        frames.append(_sided(right_chunks, joined_right, RIGHT))
    chunks = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs="EPSG:4326")
    chunks = chunks[chunks["num_rows"] > 0].dropna(subset=["geometry"])
    rows = [
        _to_wgs84(_spread(f, sample_rows)).assign(**{SIDE: side})
        for f, side in ((left_rows, LEFT), (right_rows, RIGHT))
        if f is not None and len(f)
    ]
    drawn = (
        gpd.GeoDataFrame(pd.concat(rows, ignore_index=True), crs="EPSG:4326")
        if rows
        else gpd.GeoDataFrame({SIDE: []}, geometry=[], crs="EPSG:4326")
    )
    groups = []
    for side in (LEFT_JOINED, LEFT, RIGHT_JOINED, RIGHT):
        mine = chunks[chunks[SIDE] == side]
        if len(mine) or side == RIGHT:
            n = int(mine["num_rows"].sum())
            if side == RIGHT and right_chunks is None:
                n = len(right_rows) if right_total_rows is None else int(right_total_rows)
            groups.append(Group(key=side, rows=n, chunks=len(mine)))
    return _render(
        path,
        name,
        tiles,
        title=title if title is not None else name,
        subtitle=subtitle,
        groups=groups,
        total_rows=sum(g.rows for g in groups),
        rows=drawn,
        chunks=chunks,
        group_column=SIDE,
        group_label="side",
        tiles_attribution=tiles_attribution,
    )
