"""Small inputs in the vector formats GDAL reads, written offline: an OpenStreetMap ``.osm.pbf``
(by ``osmium``'s SimpleWriter: GDAL's OSM driver reads but cannot write), GPX, KML, a zipped
Shapefile, MapInfo, GML and a File Geodatabase folder (by pyogrio)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import geopandas as gpd
import shapely

OSM_CAFES = 12
"""Tagged nodes of :func:`write_osm_pbf` (the ``points`` layer); it also has 1 road
(``lines``) and 1 building (``multipolygons``)."""


def write_osm_pbf(path: Path) -> Path:
    """A tiny ``.osm.pbf``: :data:`OSM_CAFES` cafes (tagged nodes), a road and a building."""
    import osmium

    common = {"version": 1, "changeset": 1, "uid": 1, "user": "t",
              "timestamp": "2024-01-01T00:00:00Z"}  # fmt: skip
    writer = osmium.SimpleWriter(str(path))
    try:
        for i in range(1, OSM_CAFES + 9):
            tags = {"amenity": "cafe", "name": f"cafe {i}"} if i <= OSM_CAFES else {}
            loc = (10 + i * 0.01, 50 + i * 0.01)
            writer.add_node(osmium.osm.mutable.Node(id=i, location=loc, tags=tags, **common))
        road = list(range(OSM_CAFES + 1, OSM_CAFES + 5))
        writer.add_way(
            osmium.osm.mutable.Way(id=100, nodes=road, tags={"highway": "residential"}, **common)
        )
        ring = [OSM_CAFES + 5, OSM_CAFES + 6, OSM_CAFES + 8, OSM_CAFES + 5]
        writer.add_way(
            osmium.osm.mutable.Way(id=101, nodes=ring, tags={"building": "yes"}, **common)
        )
    finally:
        writer.close()
    return path


def places(n: int = 5) -> gpd.GeoDataFrame:
    """``n`` named points (column ``name``: ``p0``, ``p1``, ...) in EPSG:4326."""
    geoms = [shapely.Point(-5 + i, 40 + i * 0.5) for i in range(n)]
    return gpd.GeoDataFrame({"name": [f"p{i}" for i in range(n)]}, geometry=geoms, crs=4326)


def write_gpx(path: Path, n: int = 5) -> Path:
    """A GPX file whose ``waypoints`` layer holds :func:`places`."""
    places(n).to_file(path, driver="GPX", engine="pyogrio")
    return path


def write_kml(path: Path, n: int = 5) -> Path:
    places(n).to_file(path, driver="KML", engine="pyogrio")
    return path


def write_zipped_shapefile(folder: Path, n: int = 5) -> Path:
    """``folder/places.zip`` holding ``places.shp`` and its sidecars."""
    folder.mkdir(parents=True, exist_ok=True)
    shp = folder / "shp"
    shp.mkdir(exist_ok=True)
    places(n).to_file(shp / "places.shp", engine="pyogrio")
    out = folder / "places.zip"
    with zipfile.ZipFile(out, "w") as z:
        for f in sorted(shp.iterdir()):
            z.write(f, f.name)
    return out
