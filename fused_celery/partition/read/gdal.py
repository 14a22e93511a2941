"""Inputs GDAL reads (``.geojson``, ``.json``, ``.gpkg``, ``.shp``, ``.fgb``, ``.zip``, ``.gml``,
``.kml``) in slices of features.

A slice is features ``[start, stop)`` of a layer (default the first; as many as ``target_bytes``
of the file's average bytes per feature, at most ``target_rows``), read with pyogrio's
``skip_features`` / ``max_features``; the feature count comes from
``pyogrio.read_info(force_feature_count=True)``. A FlatGeobuf with a spatial index lists its
features in index order. A file on S3 is read from its local copy (:mod:`.remote`), made by the
client to count its features and by each worker that reads one of its slices. GeoJSON, GML and
KML are parsed whole by GDAL when opened, so their slices bound the frame's size, not the
parsing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fused_celery import storage
from fused_celery.errors import IngestInputError
from fused_celery.partition.prepare import frame_from_lonlat
from fused_celery.partition.read.base import InputSlice, check_columns, open_options_kwargs
from fused_celery.partition.read.remote import local_copy, remote_file

if TYPE_CHECKING:
    import geopandas as gpd

GDAL_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb", ".zip", ".gml", ".kml")


def _gdal_kwargs(gdal_open_options: Mapping[str, str] | None, layer: str | None) -> dict[str, Any]:
    kwargs = open_options_kwargs(gdal_open_options)
    if layer is not None:
        kwargs["layer"] = layer
    return kwargs


def _gdal_info(
    url: str, path: str, gdal_open_options: Mapping[str, str] | None, layer: str | None
) -> dict[str, Any]:
    """``pyogrio.read_info`` of the layer (features counted); a missing layer names the ones
    there are."""
    import pyogrio
    from pyogrio.errors import DataLayerError

    try:
        return pyogrio.read_info(
            path, force_feature_count=True, **_gdal_kwargs(gdal_open_options, layer)
        )
    except DataLayerError as exc:
        if layer is None:
            raise
        try:
            layers = [str(row[0]) for row in pyogrio.list_layers(path)]
        except Exception:  # only to improve the message
            layers = []
        raise IngestInputError(
            f"ingest input {url} has no layer {layer!r} (gdal_config.layer); its layers are "
            f"{layers}"
        ) from exc


def gdal_slices(
    url: str,
    *,
    target_rows: int,
    target_bytes: int,
    lonlat_cols: Sequence[str] | None = None,
    load_columns: Sequence[str] | None = None,
    gdal_open_options: Mapping[str, str] | None = None,
    layer: str | None = None,
) -> list[dict[str, Any]]:
    """The slices of the GDAL-readable file at ``url`` as :class:`InputSlice` fields without
    ``slice_id`` (see the module docstring). target_rows / target_bytes: the slice size.
    lonlat_cols / load_columns (defaults None) are checked against the layer's fields; without
    ``lonlat_cols`` the layer needs a geometry. gdal_open_options: GDAL open options (default
    None). layer: the layer (default None: the first)."""
    base: dict[str, Any] = {"url": url, "format": "gdal", "layer": layer}
    if storage.parse(url).scheme == "s3":
        size, mtime_ns, sidecars = remote_file(url)
        base |= {"size": size, "mtime_ns": mtime_ns, "sidecars": sidecars}
        path = local_copy(url, size, mtime_ns, sidecars)
    else:
        path = url
    info = _gdal_info(url, path, gdal_open_options, layer)
    columns = [str(c) for c in info["fields"]]
    check_columns(url, columns, lonlat_cols=lonlat_cols, load_columns=load_columns)
    if lonlat_cols is None and info.get("geometry_type") is None:
        raise IngestInputError(
            f"ingest input {url} has no geometry (layer {info.get('layer_name')!r}); pass "
            f"lonlat_cols=(lon_column, lat_column) to make points; its columns are {columns}"
        )
    n = int(info["features"])
    if n < 0:
        raise IngestInputError(f"GDAL cannot count the features of ingest input {url}")
    target = target_rows
    file_bytes = _file_bytes(path)
    if n and file_bytes:
        target = min(target, max(1, target_bytes * n // file_bytes))
    return [
        {**base, "start": a, "stop": min(n, a + target), "num_rows": min(n, a + target) - a}
        for a in range(0, n, target)
    ]


def _file_bytes(path: str) -> int:
    """Size of a local GDAL input (0 when unknown, e.g. a ``/vsi`` path)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def read_gdal_slice(
    sl: InputSlice,
    *,
    lonlat_cols: Sequence[str] | None = None,
    load_columns: Sequence[str] | None = None,
    gdal_open_options: Mapping[str, str] | None = None,
) -> gpd.GeoDataFrame:
    """The features of a GDAL slice (its layer: ``sl.layer``) as a GeoDataFrame: points from
    ``lonlat_cols`` (default None: the layer's geometry), only ``load_columns`` (default None:
    all) besides, opened with ``gdal_open_options`` (default None). Library errors are left to
    the caller's :func:`~.base.reading`."""
    import pyogrio

    path = sl.url
    if sl.size is not None:
        path = local_copy(sl.url, sl.size, sl.mtime_ns, sl.sidecars)
    kwargs = _gdal_kwargs(gdal_open_options, sl.layer)
    kwargs["layer"] = sl.layer
    wanted: list[str] = []
    if load_columns is not None or lonlat_cols is not None:
        wanted = [*(load_columns or ()), *(lonlat_cols or ())]
    if load_columns is not None:
        kwargs["columns"] = list(dict.fromkeys(wanted))
    frame = pyogrio.read_dataframe(
        path,
        skip_features=sl.start,
        max_features=sl.stop - sl.start,
        read_geometry=lonlat_cols is None,
        use_arrow=True,
        **kwargs,
    )
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        info = _gdal_info(sl.url, path, gdal_open_options, sl.layer)
        fields = [str(c) for c in info["fields"]]
        check_columns(sl.url, fields, lonlat_cols=lonlat_cols, load_columns=load_columns)
    if lonlat_cols is not None:
        return frame_from_lonlat(frame, *lonlat_cols)
    return frame.reset_index(drop=True)
