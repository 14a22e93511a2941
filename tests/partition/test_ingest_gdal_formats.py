"""Ingest inputs in any vector format GDAL reads: OpenStreetMap ``.osm.pbf`` (read in one
streaming pass), GPX, KML, zipped Shapefiles, MapInfo, File Geodatabase folders, ``/vsizip/``
and ``/vsicurl/`` paths, unknown suffixes sniffed by GDAL; ``gdal_config`` (layer, open and
config options) passed through. Locally, and on a real cluster (slow)."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import geopandas as gpd
import pyogrio
import pytest
from gdal_inputs import (
    OSM_CAFES,
    places,
    write_gpx,
    write_kml,
    write_osm_pbf,
    write_zipped_shapefile,
)

import fused_celery as fused
from fused_celery.errors import UnsupportedInputError
from fused_celery.options import options
from fused_celery.partition.read import list_slices, stream_sequential
from fused_celery.partition.read.gdal import stream_slices
from fused_celery.table import open_table


def ingest_local(src: str, out: Path, **kwargs) -> gpd.GeoDataFrame:
    fused.ingest(src, **kwargs).run_local(str(out))
    return open_table(str(out)).get_dataframe()


def test_osm_pbf_layers_and_config_options(tmp_path):
    pbf = write_osm_pbf(tmp_path / "tiny.osm.pbf")
    cafes = ingest_local(str(pbf), tmp_path / "points")  # the first layer: points
    assert len(cafes) == OSM_CAFES and set(cafes["name"]) == {
        f"cafe {i}" for i in range(1, OSM_CAFES + 1)
    }
    assert "amenity" in cafes["other_tags"].iloc[0]
    gdal = {"layer": "lines", "config_options": {"OSM_USE_CUSTOM_INDEXING": "NO"}}
    lines = ingest_local(str(pbf), tmp_path / "lines", gdal_config=gdal)
    assert list(lines["highway"]) == ["residential"]
    assert list(lines.geometry.geom_type) == ["LineString"]
    # The option was set only while the reads ran.
    assert pyogrio.get_gdal_config_option("OSM_USE_CUSTOM_INDEXING") is None
    with pytest.raises(fused.errors.IngestInputError, match=r"no layer 'roads'.*'multipolygons'"):
        fused.ingest(str(pbf), gdal_config={"layer": "roads"}).run_local(str(tmp_path / "x"))


def test_a_sequential_layer_is_streamed_into_bounded_slices(tmp_path, monkeypatch):
    """OSM cannot be read from a feature on: one listed slice, streamed in one pass into
    Parquet slices of at most ``target_rows`` rows each; the table has every feature once."""
    pbf = write_osm_pbf(tmp_path / "tiny.osm.pbf")
    config = fused.ingest(str(pbf))
    listed = list_slices(config, target_rows=5)
    assert [(s.format, s.sequential, s.num_rows) for s in listed] == [("gdal", True, None)]
    streamed = stream_sequential(listed, config, str(tmp_path / "work"), target_rows=5)
    assert [s.format for s in streamed] == ["parquet"] * 3
    assert [s.num_rows for s in streamed] == [5, 5, 2] and [s.slice_id for s in streamed] == [
        0,
        1,
        2,
    ]
    names = [gpd.read_parquet(s.url)["name"].tolist() for s in streamed]
    assert sum(names, []) == [f"cafe {i}" for i in range(1, OSM_CAFES + 1)]
    # One pass, one slice in memory: each file is written before the next features are read.
    files = stream_slices(listed[0], str(tmp_path / "lazy"), target_rows=5, target_bytes=1 << 30)
    first, rows = next(files)
    assert rows == 5 and [p.name for p in (tmp_path / "lazy").iterdir()] == ["0-0.parquet"]
    assert [n for _, n in files] == [5, 2]
    monkeypatch.setattr(options, "ingest_slice_rows", 5)
    table = fused.ingest(str(pbf)).run_local(str(tmp_path / "out"))
    assert table.num_rows == OSM_CAFES
    assert table.ingest_report["input_rows"] == OSM_CAFES


def test_gpx_kml_zipped_shapefile_mapinfo_gml_and_gdb(tmp_path):
    want = sorted(places()["name"])
    gpx = write_gpx(tmp_path / "walk.gpx")
    got = ingest_local(str(gpx), tmp_path / "gpx", gdal_config={"layer": "waypoints"})
    assert sorted(got["name"]) == want
    assert (
        sorted(ingest_local(str(write_kml(tmp_path / "p.kml")), tmp_path / "kml")["Name"]) == want
    )
    zipped = write_zipped_shapefile(tmp_path / "z")
    assert sorted(ingest_local(str(zipped), tmp_path / "zip")["name"]) == want
    inner = f"/vsizip/{zipped}/places.shp"
    assert sorted(ingest_local(inner, tmp_path / "vsizip")["name"]) == want
    for driver, name in (("MapInfo File", "p.tab"), ("GML", "p.gml"), ("OpenFileGDB", "p.gdb")):
        places().to_file(tmp_path / name, driver=driver, engine="pyogrio")
        got = ingest_local(str(tmp_path / name), tmp_path / f"out-{driver[:3]}")
        assert sorted(got["name"]) == want, driver


def test_unknown_suffix_is_sniffed_by_gdal(tmp_path):
    odd = write_gpx(tmp_path / "walk.track")  # GPX under a suffix no reader knows
    got = ingest_local(str(odd), tmp_path / "odd", gdal_config={"layer": "waypoints"})
    assert sorted(got["name"]) == sorted(places()["name"])
    junk = tmp_path / "notes.dat"
    junk.write_text("not geodata\n")
    with pytest.raises(UnsupportedInputError, match=r"GDAL cannot open it.*not recognized"):
        fused.ingest(str(junk)).run_local(str(tmp_path / "junk"))
    assert not (tmp_path / "junk").exists()


def test_vsicurl_path_over_loopback_http(tmp_path):
    write_gpx(tmp_path / "walk.gpx")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"/vsicurl/http://127.0.0.1:{server.server_address[1]}/walk.gpx"
        got = ingest_local(url, tmp_path / "out", gdal_config={"layer": "waypoints"})
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(got["name"]) == sorted(places()["name"])


@pytest.mark.slow
def test_osm_gpx_zipped_shapefile_and_kml_ingest_on_the_cluster(on_shared_cluster, tmp_path):
    pbf = write_osm_pbf(tmp_path / "tiny.osm.pbf")
    inputs = {
        "osm": (str(pbf), {"gdal_config": {"config_options": {"OSM_USE_CUSTOM_INDEXING": "NO"}}}),
        "gpx": (str(write_gpx(tmp_path / "walk.gpx")), {"gdal_config": {"layer": "waypoints"}}),
        "zip": (str(write_zipped_shapefile(tmp_path / "z")), {}),
        "kml": (str(write_kml(tmp_path / "p.kml")), {}),
    }
    jobs = {
        k: fused.ingest(src, **kw).run_remote(output_table=str(tmp_path / f"out-{k}"))
        for k, (src, kw) in inputs.items()
    }
    for k, resp in jobs.items():
        resp.wait_for_job(timeout=120)
        assert resp.status == "Done", (k, resp.get_logs()[-4:])
    assert open_table(str(tmp_path / "out-osm")).num_rows == OSM_CAFES
    want = sorted(places()["name"])
    for k, col in (("gpx", "name"), ("zip", "name"), ("kml", "Name")):
        assert sorted(open_table(str(tmp_path / f"out-{k}")).get_dataframe()[col]) == want, k
