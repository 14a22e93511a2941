"""No silent row loss: coordinates past ±180 / ±90 by floating-point error are inside (their
stored bbox clamped), and every row dropped or repaired by an ingest is counted in the job log,
``get_results()["report"]``, the table's ``ingest_report`` and a warning from ``run_local``."""

from __future__ import annotations

import geopandas as gpd
import pyarrow.parquet as pq
import pytest
import shapely

import fused_celery as fused
from fused_celery.errors import IngestRowsWarning
from fused_celery.table import open_table

EDGE = 180.00000000000006  # 180 + 2 ulp: what a reprojection or a rounding source gives


def antimeridian_rows() -> gpd.GeoDataFrame:
    """Row 0: a valid polygon spanning the antimeridian (two parts, one ending at ``EDGE``);
    row 1: a polygon reaching the pole by rounding; row 2: an ordinary point; row 3: truly out
    of bounds."""
    spanning = shapely.MultiPolygon(
        [shapely.box(179.5, 10, EDGE, 11), shapely.box(-180, 10, -179.5, 11)]
    )
    polar = shapely.box(0, 89, 1, 90.00000000000003)
    geoms = [spanning, polar, shapely.Point(5, 5), shapely.box(170, 0, 181, 1)]
    return gpd.GeoDataFrame({"uid": range(4)}, geometry=geoms, crs="EPSG:4326")


def check_report(report: dict, *, clamped: int = 2) -> None:
    assert report["input_rows"] == 4 and report["output_rows"] == 3
    assert report["dropped"] == {"out_of_bounds": 1}
    assert report["repaired"] == {"clamped_to_bounds": clamped}


def check_table(url: str, *, clamped: int = 2) -> None:
    table = open_table(url)
    frame = table.get_dataframe()
    assert sorted(frame["uid"]) == [0, 1, 2]
    spanning = frame.set_index("uid").geometry[0]
    assert spanning.bounds[2] == EDGE  # the geometry itself is kept as it was
    assert shapely.is_valid(spanning)
    for c in table.chunk_metadata:  # the stored bboxes are clamped
        assert -180 <= c.bbox_minx <= c.bbox_maxx <= 180
        assert -90 <= c.bbox_miny <= c.bbox_maxy <= 90
    cover = pq.read_table(table.file_urls[0], columns=["bbox"]).column("bbox").to_pylist()
    for b in cover:
        assert b["xmax"] <= 180 and b["ymax"] <= 90
    check_report(table.ingest_report, clamped=clamped)


def test_antimeridian_polygon_survives_run_local_and_losses_are_counted(tmp_path):
    src = tmp_path / "in.parquet"
    antimeridian_rows().to_parquet(src)
    with pytest.warns(IngestRowsWarning, match=r"4 in, 3 out; dropped 1 .*outside the WGS84"):
        fused.ingest(str(src)).run_local(str(tmp_path / "out"))
    check_table(str(tmp_path / "out"))


def test_points_at_the_edge_survive_the_points_fast_path(tmp_path):
    """GeoParquet points skip geometry decoding; a point at x = ``EDGE`` is kept and its bbox
    clamped there too; one at x = 200 is dropped and counted."""
    geoms = [shapely.Point(EDGE, 1), shapely.Point(-EDGE, -90.00000000000001),
             shapely.Point(3, 4), shapely.Point(200, 0)]  # fmt: skip
    gdf = gpd.GeoDataFrame({"uid": range(4)}, geometry=geoms, crs="EPSG:4326")
    gdf.to_parquet(tmp_path / "pts.parquet")
    with pytest.warns(IngestRowsWarning):
        fused.ingest(str(tmp_path / "pts.parquet")).run_local(str(tmp_path / "out"))
    check_table_points = open_table(str(tmp_path / "out"))
    assert sorted(check_table_points.get_dataframe()["uid"]) == [0, 1, 2]
    assert max(c.bbox_maxx for c in check_table_points.chunk_metadata) == 180.0
    check_report(check_table_points.ingest_report)


def test_nothing_dropped_means_no_warning(tmp_path, recwarn):
    gdf = antimeridian_rows().iloc[[2]]
    gdf.to_parquet(tmp_path / "one.parquet")
    fused.ingest(str(tmp_path / "one.parquet")).run_local(str(tmp_path / "out"))
    assert not [w for w in recwarn if issubclass(w.category, IngestRowsWarning)]
    report = open_table(str(tmp_path / "out")).ingest_report
    assert report["input_rows"] == report["output_rows"] == 1
    assert report["dropped"] == {} and report["repaired"] == {}


@pytest.mark.slow
def test_remote_ingest_counts_drops_and_repairs_everywhere(on_shared_cluster, tmp_path):
    src = tmp_path / "in.parquet"
    antimeridian_rows().to_parquet(src)
    resp = fused.ingest(str(src)).run_remote(output_table=str(tmp_path / "out"))
    resp.wait_for_job(timeout=120)
    logs = resp.get_logs()
    assert resp.status == "Done", "\n".join(logs[-4:])
    check_report(resp.get_results()["report"])
    check_table(str(tmp_path / "out"))
    summary = [line for line in logs if "4 in, 3 out; dropped 1" in line]
    assert summary and any("clamped" in line for line in summary), logs


def test_job_config_run_local_warns_per_ingest_step(tmp_path):
    src = tmp_path / "in.parquet"
    antimeridian_rows().to_parquet(src)
    job = fused.JobConfig(steps=[fused.ingest(str(src), output=str(tmp_path / "out"))])
    with pytest.warns(IngestRowsWarning, match=r"step 0 .*4 rows in, 3 out.*out_of_bounds"):
        result = job.run_local()
    check_report(result["steps"][0]["report"])
    check_table(str(tmp_path / "out"))
