"""fused_celery.maps: offline HTML maps of tables and frames, checked in headless Chromium.

The Chromium tests need Debian's ``chromium`` on PATH (``./run test`` installs it when it can);
without it they fail with what to install, never skip.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from chromium import WINDOW, run_chromium
from PIL import Image

import fused_celery as fused
from fused_celery.demo import result_frame, write_result_map
from fused_celery.errors import IncompleteTableError, TableNotFoundError
from fused_celery.maps import MapFile, MapFileExistsError, OfflineAssetError, show_frame, show_table
from fused_celery.maps.offline import check_offline, inline_assets, network_urls
from fused_celery.maps.output import MARKER
from fused_celery.maps.render import BACKGROUND, CHUNK_CLASS, LEGEND_ID, ROW_CLASS
from fused_celery.options import options
from fused_celery.table import Table, get_chunks_metadata, open_table

N_POINTS = 4000
_FIT_BOUNDS = re.compile(
    r"fitBounds\(\s*\[\[([-\d.e]+), ([-\d.e]+)\], \[([-\d.e]+), ([-\d.e]+)\]\]"
)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Table:
    """A committed table of 4000 points in 2-4 files of a few chunks each."""
    rng = np.random.default_rng(7)
    gdf = gpd.GeoDataFrame(
        {"value": np.arange(N_POINTS), "name": [f"point {i}" for i in range(N_POINTS)]},
        geometry=shapely.points(rng.uniform(2.0, 8.0, N_POINTS), rng.uniform(45.0, 50.0, N_POINTS)),
        crs="EPSG:4326",
    )
    url = str(tmp_path_factory.mktemp("maps") / "points")
    job = fused.ingest(gdf, partitioning_maximum_per_file=1500, partitioning_maximum_per_chunk=400)
    opened = job.run_local(url)
    assert 2 <= opened.num_files <= 4 and opened.num_chunks > opened.num_files
    return opened


@pytest.fixture
def storage_root(tmp_path: Path) -> Iterator[Path]:
    """``options.storage_root`` pointed at a fresh folder (default map paths go under it)."""
    saved = options.storage_root
    options.storage_root = str(tmp_path / "root")
    try:
        yield tmp_path / "root"
    finally:
        options.storage_root = saved


@pytest.fixture(scope="module")
def table_map(table: Table, tmp_path_factory: pytest.TempPathFactory) -> MapFile:
    return show_table(table, tmp_path_factory.mktemp("map") / "points.html")


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]


# --- the table map in Chromium -----------------------------------------------------------------


def test_screenshot_shows_chunks_and_rows(table: Table, table_map: MapFile, tmp_path: Path):
    png = tmp_path / "map.png"
    done = run_chromium(Path(table_map.path), tmp_path, f"--screenshot={png}")
    assert _console_errors(done.stderr) == []
    image = Image.open(png).convert("RGB")
    assert image.size == WINDOW
    # the map area: the window without the legend (top right) and the controls (left)
    area = np.asarray(image).astype(int)
    area[:280, 690:] = -1000
    area[:160, :160] = -1000
    area[740:, :120] = -1000
    pixels = area.reshape(-1, 3)
    pixels = pixels[pixels[:, 0] >= 0]
    background = np.array([int(BACKGROUND[i : i + 2], 16) for i in (1, 3, 5)])
    painted = np.abs(pixels - background).sum(axis=1) > 12
    assert painted.mean() > 0.25, f"only {painted.mean():.0%} of the map area is drawn"
    colours, counts = np.unique(pixels // 16, axis=0, return_counts=True)
    frequent = int((counts > 0.005 * len(pixels)).sum())
    assert frequent >= table.num_files + 1, f"{frequent} distinct colours in the map area"
    dark = (pixels.sum(axis=1) < 200).mean()  # the sample rows' dots
    assert dark > 0.002


def test_dom_has_chunk_layer_rows_and_legend(table: Table, table_map: MapFile, tmp_path: Path):
    done = run_chromium(Path(table_map.path), tmp_path, "--dump-dom")
    dom = done.stdout
    assert _console_errors(done.stderr) == []
    chunk_paths = re.findall(rf'<path class="{CHUNK_CLASS} [^"]*"[^>]*>', dom)
    assert len(chunk_paths) == table.num_chunks
    strokes = {re.search(r'stroke="([^"]+)"', p).group(1) for p in chunk_paths}
    assert len(strokes) == table.num_files  # one colour per file
    assert len(re.findall(rf'<path class="{ROW_CLASS} ', dom)) == len(table.sample)
    legend = dom[dom.index(f'id="{LEGEND_ID}"') :]
    legend = re.sub(r"<[^>]+>", " ", legend[: legend.index("</table>")])
    words = legend.split()
    assert table.name in words
    assert f"{N_POINTS:,}" in words and str(table.num_chunks) in words
    metadata = get_chunks_metadata(table.url)
    for file_id, rows in metadata.groupby("file_id")["num_rows"].sum().items():
        assert f"{file_id} {len(metadata[metadata.file_id == file_id])} {rows:,}" in " ".join(words)


# --- the HTML ----------------------------------------------------------------------------------


def test_html_is_self_contained(table_map: MapFile):
    html = table_map.read_html()
    assert html.startswith(MARKER)
    assert network_urls(html) == []
    assert not re.search(r"<(script|link|img)\b[^>]*\b(src|href)=", html)
    assert "Leaflet 1.9.4" in html and "data-fused-celery-asset='leaflet_css'" in html
    assert "sourceMappingURL" not in html
    assert os.fspath(table_map) == str(table_map) == table_map.path
    frame = table_map._repr_html_()
    assert frame.startswith("<iframe srcdoc=") and "&lt;script" in frame


def test_network_urls_finds_what_a_browser_would_fetch():
    page = (
        '<script src="https://cdn.example/x.js"></script><link rel="stylesheet" '
        "href='//cdn.example/y.css'><style>a{background:url(http://e.example/i.png)}</style>"
        '<a href="https://leafletjs.com">Leaflet</a>'
    )
    assert network_urls(page) == [
        "https://cdn.example/x.js",
        "//cdn.example/y.css",
        "http://e.example/i.png",
    ]
    with pytest.raises(OfflineAssetError, match="network"):
        check_offline(page)


def test_an_element_needing_an_unshipped_asset_is_refused():
    import folium
    from folium.plugins import Fullscreen

    m = folium.Map(tiles=None)
    Fullscreen().add_to(m)
    with pytest.raises(OfflineAssetError, match="does not ship"):
        inline_assets(m.get_root())


def test_tiles_only_when_asked(table: Table, tmp_path: Path):
    url = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    html = show_table(table, tmp_path / "tiles.html", tiles=url).read_html()
    assert url in html and "tile.openstreetmap.org" in html
    assert network_urls(html) == []  # tiles are fetched by Leaflet, not by the page's markup
    assert "openstreetmap" not in show_table(table, tmp_path / "plain.html").read_html()


# --- paths -------------------------------------------------------------------------------------


def test_default_path_and_overwrite_rule(table: Table, storage_root: Path):
    first = show_table(table.url)
    assert first.path == str(storage_root / "maps" / f"{table.name}.html")
    assert show_table(table.url).path == first.path  # ours: overwritten
    foreign = storage_root / "maps" / "demo.html"
    foreign.write_text("my notes")
    made = show_frame(gpd.GeoDataFrame(geometry=[shapely.Point(1, 2)], crs=4326), name="demo")
    assert made.path == str(storage_root / "maps" / "demo-2.html")
    assert foreign.read_text() == "my notes"
    with pytest.raises(MapFileExistsError, match="not written by fused-celery"):
        show_table(table, foreign)
    assert foreign.read_text() == "my notes"


def test_default_path_with_s3_storage_root_is_a_temp_file(table: Table, storage_root: Path):
    options.storage_root = "s3://bucket/prefix"
    made = show_table(table)
    assert Path(made.path).parent.name == "fused-celery-maps"
    assert Path(made.path).name == f"{table.name}.html"


# --- bad input ---------------------------------------------------------------------------------


def test_not_a_table_raises_the_table_error(tmp_path: Path):
    with pytest.raises(TableNotFoundError, match="no table"):
        show_table(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "0.parquet").write_bytes(b"x")
    with pytest.raises(IncompleteTableError):
        show_table(tmp_path / "half")
    (tmp_path / "file.parquet").write_bytes(b"x")
    with pytest.raises(TableNotFoundError, match="is a file"):
        show_table(tmp_path / "file.parquet")


def test_empty_table_gives_an_empty_map_saying_zero_rows(
    table: Table, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import fused_celery.maps.table_map as table_map

    empty = open_table(table.url).model_copy(update={"sample": table.sample.iloc[0:0]})
    monkeypatch.setattr(table_map, "get_chunks_metadata", lambda url: get_chunks_metadata(url)[:0])
    html = show_table(empty, tmp_path / "empty.html").read_html()
    assert f'class="{CHUNK_CLASS}"' not in html and '"fc-row"' not in html
    total = re.search(r'class="fc-legend-total">(.*?)</tr>', html, re.S).group(1)
    assert re.sub(r"<[^>]+>", " ", total).split() == ["total", "0", "0"]


def test_projected_frame_is_reprojected(tmp_path: Path):
    paris = gpd.GeoDataFrame({"v": [1, 2]}, geometry=shapely.points([2.35, 2.45], [48.85, 48.9]))
    projected = paris.set_crs(4326).to_crs(3857)
    html = show_frame(projected, tmp_path / "p.html").read_html()
    miny, minx, maxy, maxx = (float(v) for v in _FIT_BOUNDS.search(html).groups())
    assert (minx, miny, maxx, maxy) == pytest.approx((2.35, 48.85, 2.45, 48.9), abs=1e-6)
    no_crs = show_frame(paris, tmp_path / "q.html").read_html()  # taken as lon/lat
    bounds = [float(v) for v in _FIT_BOUNDS.search(no_crs).groups()]
    assert bounds == pytest.approx([miny, minx, maxy, maxx], abs=1e-6)
    chunked = projected.assign(file_id=["0", "1"], chunk_id=[0, 0])
    html = show_frame(chunked, tmp_path / "r.html").read_html()
    bounds = [float(v) for v in _FIT_BOUNDS.search(html).groups()]
    assert bounds == pytest.approx([miny, minx, maxy, maxx], abs=1e-6)
    assert html.count(f'"className": "{CHUNK_CLASS}"') >= 1


def test_frame_with_chunk_columns_draws_chunk_boxes(tmp_path: Path):
    frame = gpd.GeoDataFrame(
        {"file_id": ["0", "0", "1", "1", "1"], "chunk_id": [0, 1, 0, 0, 1]},
        geometry=shapely.points([0, 1, 5, 6, 7], [0, 1, 5, 6, 7]),
        crs=4326,
    )
    html = show_frame(frame, tmp_path / "c.html", title="step output").read_html()
    assert html.count(f'"className": "{CHUNK_CLASS}"') >= 1
    total = re.search(r'class="fc-legend-total">(.*?)</tr>', html, re.S).group(1)
    assert re.sub(r"<[^>]+>", " ", total).split() == ["total", "4", "5"]
    with pytest.raises(KeyError, match="color_by"):
        show_frame(frame, tmp_path / "d.html", color_by="missing")
    with pytest.raises(TypeError, match="GeoDataFrame"):
        show_frame(pd.DataFrame({"a": [1]}), tmp_path / "e.html")


# --- the demo's map ----------------------------------------------------------------------------


def test_demo_result_map(tmp_path: Path):
    from fused_celery.demo import buffered_point, sample_points

    args = sample_points(12)
    results = [buffered_point(**a, engine="local", cache=False) for a in args]
    index = pd.MultiIndex.from_tuples(
        [(a["lon"], a["lat"], a["radius_m"]) for a in args], names=["lon", "lat", "radius_m"]
    )
    df = pd.DataFrame(results, index=index)
    frame = result_frame(df)
    assert len(frame) == 12 and frame.crs.to_epsg() == 4326
    made = write_result_map(df, tmp_path / "demo.html")
    html = made.read_html()
    assert "fused-celery demo: 12 buffered points" in html
    assert network_urls(html) == []
    radii = sorted({a["radius_m"] for a in args})
    positions = [html.index(f"<td>{r:g} m</td>") for r in radii]
    assert positions == sorted(positions)  # the legend lists radii in numeric order


def test_table_show_writes_the_same_map(table: Table, tmp_path: Path):
    shown = table.show(tmp_path / "shown.html")
    assert shown.path == str(tmp_path / "shown.html")
    html = shown.read_html()
    total = int(get_chunks_metadata(table.url)["num_rows"].sum())
    assert html.startswith(MARKER) and "fused-celery-legend" in html
    assert f"{total:,}" in html and network_urls(html) == []
