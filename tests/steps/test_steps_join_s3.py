"""The join steps on S3 (moto in server mode): left and right tables, and a right single file
(GeoParquet and GeoJSON), read through the storage layer."""

from __future__ import annotations

import io

from join_tables import make_polygons, pairs, sjoin_pairs
from steps_tables import ingest_table, make_points

import fused_celery as fused
from fused_celery import storage
from fused_celery.jobs.config import JobConfig

pytest_plugins = ["moto_server"]


def test_join_and_singlefile_on_s3(s3_bucket):
    points, polygons = make_points(), make_polygons()
    left = ingest_table(points, f"{s3_bucket}/left")
    right = ingest_table(polygons, f"{s3_bucket}/right", 30, 10)
    step = fused.join(left, right, output_table=f"{s3_bucket}/out")
    JobConfig(steps=[step]).run_local(engine=None)
    assert pairs(step.open_output().get_dataframe()) == sjoin_pairs(points, polygons)
    for suffix in ("parquet", "geojson"):
        buf = io.BytesIO()
        polygons.to_parquet(buf) if suffix == "parquet" else polygons.to_file(buf, driver="GeoJSON")
        url = f"{s3_bucket}/right.{suffix}"
        storage.write_bytes(url, buf.getvalue())
        single = fused.join_singlefile(left, url, output_table=f"{s3_bucket}/single-{suffix}")
        JobConfig(steps=[single]).run_local(engine=None)
        assert pairs(single.open_output().get_dataframe()) == sjoin_pairs(points, polygons)
