"""``show``: an offline HTML map of a table (:func:`show_table`) or of a GeoDataFrame
(:func:`show_frame`), written to a file and returned as a :class:`MapFile`.

A table's map draws every chunk's bbox (from the chunk metadata in ``_sample``), coloured by
file, and up to ``sample_rows`` of the rows stored in ``_sample`` (at most 1000, spread over the
table when it was committed); no data file is read, so it is as fast on S3 as on local disk.
An empty table gives a map with its legend saying 0 rows. Rows in another CRS are reprojected
to EPSG:4326; rows without a CRS are taken as longitude/latitude.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from fused_celery.maps.offline import check_offline, inline_assets
from fused_celery.maps.output import MapFile, write_map
from fused_celery.maps.render import Group, build_map
from fused_celery.table import Table, get_chunks_metadata, open_table

if TYPE_CHECKING:
    import geopandas as gpd
    import pandas as pd

DEFAULT_SAMPLE_ROWS = 1000
_LEADING_NUMBER = re.compile(r"-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


def _geo_frame(frame: pd.DataFrame) -> gpd.GeoDataFrame:
    """``frame`` checked to be a GeoDataFrame with a geometry column; no CRS: EPSG:4326."""
    import geopandas as gpd

    try:
        ok = isinstance(frame, gpd.GeoDataFrame) and frame.geometry is not None
    except AttributeError:  # a GeoDataFrame without an active geometry column
        ok = False
    if not ok:
        raise TypeError(
            f"a map needs a GeoDataFrame with an active geometry column, got {type(frame)}"
        )
    return frame.set_crs("EPSG:4326") if frame.crs is None else frame


def _to_wgs84(frame: pd.DataFrame) -> gpd.GeoDataFrame:
    """``frame`` (see :func:`_geo_frame`) reprojected to EPSG:4326 when in another CRS."""
    frame = _geo_frame(frame)
    return frame if frame.crs.equals("EPSG:4326") else frame.to_crs("EPSG:4326")


def _spread(frame: gpd.GeoDataFrame, k: int) -> gpd.GeoDataFrame:
    """At most ``k`` rows of ``frame``, evenly spaced (first and last included)."""
    import numpy as np

    n = len(frame)
    if n <= k:
        return frame
    idx = np.unique(np.linspace(0, n - 1, max(k, 0)).round().astype(np.int64))
    return frame.iloc[idx]


def _render(
    path: str | os.PathLike[str] | None, name: str, tiles: str | None, **content: Any
) -> MapFile:
    m = build_map(tiles=tiles, **content)
    figure = m.get_root()
    inline_assets(figure)
    html = figure.render()
    if tiles is None:
        check_offline(html)
    return write_map(html, path, name)


def show_table(
    table: Table | str | os.PathLike[str],
    path: str | os.PathLike[str] | None = None,
    *,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    title: str | None = None,
    tiles: str | None = None,
    tiles_attribution: str | None = None,
) -> MapFile:
    """Write the map of a committed table and return it.

    table: a :class:`~fused_celery.table.Table` or its URL / path / name; anything that is not a
    table raises the table layer's error (``TableNotFoundError`` and its subclasses). path: the
    HTML file (default ``<storage_root>/maps/<table name>.html``, see
    :mod:`fused_celery.maps.output`; a file fused-celery did not write is never overwritten).
    sample_rows: rows of ``_sample`` drawn (default 1000, which is all of them). title: legend
    heading (default the table's name). tiles: a basemap tile URL template such as
    ``"https://tile.openstreetmap.org/{z}/{x}/{y}.png"`` (default None: no basemap, the page
    needs no network); tiles_attribution: its attribution text (default the URL's host).
    """
    opened = table if isinstance(table, Table) else open_table(os.fspath(table))
    chunks = get_chunks_metadata(opened.url)
    chunks = chunks[chunks["num_rows"] > 0].dropna(subset=["bbox_minx", "bbox_miny"])
    per_file = chunks.groupby("file_id", sort=False).agg(
        chunks=("chunk_id", "size"), rows=("num_rows", "sum")
    )
    groups = [
        Group(key=str(f), rows=int(per_file.loc[f, "rows"]), chunks=int(per_file.loc[f, "chunks"]))
        for f in sorted(per_file.index, key=_group_order)
    ]
    sample = opened.sample
    if sample is None or not hasattr(sample, "geometry"):
        import geopandas as gpd

        sample = gpd.GeoDataFrame(geometry=[], crs="EPSG:4326")
    return _render(
        path,
        opened.name,
        tiles,
        title=title if title is not None else opened.name,
        subtitle=opened.url,
        groups=groups,
        total_rows=int(chunks["num_rows"].sum()),
        rows=_to_wgs84(_spread(sample, sample_rows)),
        chunks=chunks,
        group_column="file_id",
        group_label="file",
        tiles_attribution=tiles_attribution,
    )


def _group_order(key: Any) -> tuple[int, float, str]:
    """Keys that start with a number (file ids, ``"250 m"``) in numeric order, then the others
    by name."""
    text = str(key)
    number = _LEADING_NUMBER.match(text)
    return (0, float(number.group(0)), text) if number else (1, 0.0, text)


def show_frame(
    gdf: gpd.GeoDataFrame,
    path: str | os.PathLike[str] | None = None,
    *,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    color_by: str | None = None,
    title: str | None = None,
    name: str = "frame",
    tiles: str | None = None,
    tiles_attribution: str | None = None,
) -> MapFile:
    """Write the map of one GeoDataFrame (e.g. a step's output sampled in memory).

    gdf: the rows (any CRS; none means lon/lat). path: the HTML file (default
    ``<storage_root>/maps/<name>.html``). sample_rows: rows drawn, evenly spaced (default 1000).
    color_by: a column whose values colour the rows, counted in the legend (default
    ``"file_id"`` when the frame has ``file_id`` and ``chunk_id`` columns, and then each
    chunk's bbox is drawn too; else None: one colour). title: legend heading (default
    ``name``). name: stem of the default file name (default ``"frame"``). tiles /
    tiles_attribution: as in :func:`show_table`.
    """
    frame = _geo_frame(gdf)
    has_chunks = {"file_id", "chunk_id"} <= set(frame.columns)
    if color_by is None and has_chunks:
        color_by = "file_id"
    if color_by is not None and color_by not in frame.columns:
        raise KeyError(f"color_by={color_by!r} is not a column; columns: {list(frame.columns)}")
    chunks = _chunk_boxes(frame) if has_chunks and color_by == "file_id" else None
    rows = _to_wgs84(_spread(frame, sample_rows))  # sample first: reproject only what is drawn
    if color_by is None:
        groups = [Group(key="rows", rows=len(frame))]
    else:
        counts = frame[color_by].astype(str).value_counts(sort=False)
        per_file = chunks.groupby("file_id").size() if chunks is not None else None
        groups = [
            Group(
                key=k,
                rows=int(counts[k]),
                chunks=int(per_file.get(k, 0)) if per_file is not None else None,
            )
            for k in sorted(counts.index, key=_group_order)
        ]
        rows = rows.assign(**{color_by: rows[color_by].astype(str)})
    return _render(
        path,
        name,
        tiles,
        title=title if title is not None else name,
        groups=groups,
        total_rows=len(frame),
        rows=rows,
        chunks=chunks,
        group_column=color_by,
        group_label=color_by or "data",
        tiles_attribution=tiles_attribution,
    )


def _chunk_boxes(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """One bbox polygon per (file_id, chunk_id) of ``frame`` with its ``num_rows``, in
    EPSG:4326 (a box in another CRS is reprojected, then replaced by its envelope)."""
    import geopandas as gpd
    import shapely

    bounds = frame.geometry.bounds
    bounds["file_id"] = frame["file_id"].astype(str).to_numpy()
    bounds["chunk_id"] = frame["chunk_id"].to_numpy()
    agg = bounds.groupby(["file_id", "chunk_id"], sort=True).agg(
        minx=("minx", "min"), miny=("miny", "min"), maxx=("maxx", "max"),
        maxy=("maxy", "max"), num_rows=("minx", "size"),
    ).reset_index()  # fmt: skip
    agg = agg.dropna(subset=["minx", "miny"])
    boxes = shapely.box(agg["minx"], agg["miny"], agg["maxx"], agg["maxy"])
    out = gpd.GeoDataFrame(agg, geometry=boxes, crs=frame.crs)
    if out.crs.equals("EPSG:4326"):
        return out
    out = out.to_crs("EPSG:4326")
    return out.set_geometry(out.geometry.envelope)
