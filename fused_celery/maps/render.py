"""The folium map of a table: chunk bboxes coloured by group, sample rows, a legend.

:func:`build_map` takes plain frames in EPSG:4326 (the chunks' bboxes, a sample of rows) and the
per-group counts, and returns a ``folium.Map`` drawn with Leaflet's SVG renderer:

- a "chunks" layer: one polygon per chunk, coloured by its group (a table's ``file_id``), SVG
  class ``fc-chunk``, tooltip group / chunk / rows;
- a "sample rows" layer: the rows (points as circle markers), class ``fc-row``, tooltip with a
  few of their columns;
- a legend (``#fused-celery-legend``): title, one line per group with its colour, chunk and row
  counts, the totals, and how many sample rows are drawn;
- the view fitted to the data; no tile layer unless ``tiles`` is given (the page stays offline).

The legend's HTML and the colour order are written here (a few lines of template); drawing is
folium/Leaflet's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import folium
from branca.element import MacroElement
from branca.utilities import color_brewer
from folium.template import Template

if TYPE_CHECKING:
    import geopandas as gpd

CHUNK_CLASS = "fc-chunk"
ROW_CLASS = "fc-row"
LEGEND_ID = "fused-celery-legend"
BACKGROUND = "#f4f2ee"
ROW_COLOR = "#222222"
TOOLTIP_COLUMNS = 6
"""Columns of a sample row shown in its tooltip (the first ones)."""
TOOLTIP_CHARS = 80
LEGEND_GROUPS = 30
"""Groups listed in the legend (the others are summed in one line)."""
MAX_LAT = 85.0
"""Web Mercator's usable latitude range, for fitting the view."""


@dataclass(frozen=True)
class Group:
    """One colour of the map: ``key`` (e.g. a file id), its ``rows`` and, for tables, its
    ``chunks`` (None when the data has no chunks)."""

    key: str
    rows: int
    chunks: int | None = None


def palette(n: int) -> list[str]:
    """``n`` hex colours: ColorBrewer Dark2 up to 8, else Spectral spread out so that
    neighbouring groups (adjacent file ids are neighbours in space) get distant hues."""
    if n <= 8:
        return color_brewer("Dark2", 8)[:n]
    base = color_brewer("Spectral", min(n, 253))
    m = len(base)
    step = max(1, round(m * 0.382))
    while math.gcd(step, m) != 1:
        step += 1
    spread = [base[(i * step) % m] for i in range(m)]
    return [spread[i % m] for i in range(n)]


class Legend(MacroElement):
    """The legend box and the page background (plain HTML/CSS over the map)."""

    _template = Template(
        """
        {% macro header(this, kwargs) %}
        <style>
            .leaflet-container { background: {{ this.background }}; }
            #{{ this.legend_id }} {
                position: absolute; top: 10px; right: 10px; z-index: 1000;
                max-height: calc(100% - 40px); overflow-y: auto; min-width: 180px;
                background: rgba(255, 255, 255, 0.92); border-radius: 6px; padding: 8px 10px;
                box-shadow: 0 1px 4px rgba(0, 0, 0, 0.3);
                font: 12px/1.4 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
            }
            #{{ this.legend_id }} h1 { font-size: 14px; margin: 0 0 2px 0; }
            #{{ this.legend_id }} .fc-subtitle { color: #555; margin-bottom: 6px;
                word-break: break-all; }
            #{{ this.legend_id }} table { border-collapse: collapse; width: 100%; }
            #{{ this.legend_id }} th, #{{ this.legend_id }} td { padding: 1px 4px; }
            #{{ this.legend_id }} td.fc-num, #{{ this.legend_id }} th.fc-num {
                text-align: right; font-variant-numeric: tabular-nums; }
            #{{ this.legend_id }} tfoot td { border-top: 1px solid #999; font-weight: bold; }
            #{{ this.legend_id }} .fc-swatch { display: inline-block; width: 12px;
                height: 12px; border-radius: 2px; vertical-align: middle; }
            #{{ this.legend_id }} .fc-note { color: #555; margin-top: 6px; }
        </style>
        {% endmacro %}

        {% macro row(line) %}
        <tr class="{{ line.css }}">
            <td>{% if line.color %}<span class="fc-swatch" style="background: {{ line.color }}">
            </span>{% endif %}</td>
            <td>{{ line.label|e }}</td>
            {% if line.chunks is not none %}<td class="fc-num">{{ line.chunks }}</td>{% endif %}
            <td class="fc-num">{{ line.rows }}</td>
        </tr>
        {% endmacro %}

        {% macro html(this, kwargs) %}
        <div id="{{ this.legend_id }}">
            <h1>{{ this.title|e }}</h1>
            {% if this.subtitle %}<div class="fc-subtitle">{{ this.subtitle|e }}</div>{% endif %}
            <table>
                <thead><tr><th></th><th>{{ this.group_label|e }}</th>
                {% if this.has_chunks %}<th class="fc-num">chunks</th>{% endif %}
                <th class="fc-num">rows</th></tr></thead>
                <tbody>
                {% for line in this.lines %}{{ row(line) }}{% endfor %}
                </tbody>
                <tfoot>{{ row(this.total) }}</tfoot>
            </table>
            <div class="fc-note">{{ this.note|e }}</div>
        </div>
        {% endmacro %}
        """
    )

    def __init__(
        self,
        *,
        title: str,
        subtitle: str,
        group_label: str,
        groups: Sequence[Group],
        colors: Sequence[str],
        total_rows: int,
        has_chunks: bool,
        note: str,
    ) -> None:
        super().__init__()
        self._name = "FusedCeleryLegend"
        self.legend_id = LEGEND_ID
        self.background = BACKGROUND
        self.title = title
        self.subtitle = subtitle
        self.group_label = group_label

        def line(css: str, color: str | None, label: str, chunks: int, rows: int) -> dict:
            shown_chunks = f"{chunks:,}" if has_chunks else None
            return {"css": css, "color": color, "label": label, "chunks": shown_chunks,
                    "rows": f"{rows:,}"}  # fmt: skip

        self.has_chunks = has_chunks
        self.lines = [
            line("fc-legend-group", c, g.key, g.chunks or 0, g.rows)
            for g, c in list(zip(groups, colors))[:LEGEND_GROUPS]
        ]
        hidden = list(groups)[LEGEND_GROUPS:]
        if hidden:
            label = f"{len(hidden):,} more"
            chunks = sum(g.chunks or 0 for g in hidden)
            self.lines.append(
                line("fc-legend-more", None, label, chunks, sum(g.rows for g in hidden))
            )
        self.total = line(
            "fc-legend-total", None, "total", sum(g.chunks or 0 for g in groups), total_rows
        )
        self.note = note


def _text_columns(rows: gpd.GeoDataFrame, skip: set[str]) -> list[str]:
    geometry = rows.geometry.name
    return [c for c in rows.columns if c != geometry and c not in skip][:TOOLTIP_COLUMNS]


def _as_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value)
    return text if len(text) <= TOOLTIP_CHARS else text[: TOOLTIP_CHARS - 1] + "…"


def _display_rows(rows: gpd.GeoDataFrame, group_column: str | None) -> gpd.GeoDataFrame:
    """``rows`` reduced to what the map shows: text columns for the tooltip, the group, and
    the geometry (non-point geometries simplified to about a pixel at full extent)."""
    import geopandas as gpd
    import shapely

    rows = rows[~(rows.geometry.isna() | rows.geometry.is_empty)]
    keep = {group_column} if group_column and group_column in rows.columns else set()
    out = {c: [_as_text(v) for v in rows[c]] for c in _text_columns(rows, keep)}
    for c in keep:
        out[c] = rows[c].astype(str).to_list()
    geoms = rows.geometry.values
    if len(geoms) and not (shapely.get_type_id(geoms) == 0).all():
        minx, miny, maxx, maxy = rows.total_bounds
        geoms = shapely.simplify(geoms, max(maxx - minx, maxy - miny) / 4000.0)
    return gpd.GeoDataFrame(out, geometry=list(geoms), crs="EPSG:4326")


def _bounds(frames: Sequence[gpd.GeoDataFrame | None]) -> list[list[float]] | None:
    import numpy as np

    boxes = [f.total_bounds for f in frames if f is not None and len(f)]
    boxes = [b for b in boxes if np.isfinite(b).all()]
    if not boxes:
        return None
    b = np.array(boxes)
    miny = max(float(b[:, 1].min()), -MAX_LAT)
    maxy = min(float(b[:, 3].max()), MAX_LAT)
    return [[miny, float(b[:, 0].min())], [maxy, float(b[:, 2].max())]]


def build_map(
    *,
    title: str,
    groups: Sequence[Group],
    total_rows: int,
    rows: gpd.GeoDataFrame,
    chunks: gpd.GeoDataFrame | None = None,
    group_column: str | None = None,
    group_label: str = "file",
    subtitle: str = "",
    tiles: str | None = None,
    tiles_attribution: str | None = None,
) -> folium.Map:
    """The map (see the module docstring). Frames are in EPSG:4326.

    title / subtitle: legend heading (subtitle default none). groups: the legend's lines, in
    colour order. total_rows: rows of the whole data. rows: the sample drawn. chunks: one row
    per chunk with ``group_column``, ``chunk_id``, ``num_rows`` and the bbox polygon (default
    None: no chunk layer). group_column: the column of ``chunks`` / ``rows`` holding a group's
    key (default None: rows in one colour). group_label: its heading in the legend (default
    ``"file"``). tiles: a tile URL template or a folium tiles name (default None: no basemap,
    nothing fetched); tiles_attribution: its attribution (default the URL's host).
    """
    colors = palette(len(groups))
    color_of = {g.key: c for g, c in zip(groups, colors)}
    m = folium.Map(
        location=[20.0, 0.0], zoom_start=2, tiles=None, control_scale=True, zoom_snap=0.25
    )  # fractional zoom: the data fills the view
    if tiles is not None:
        attribution = tiles_attribution or (tiles.split("/")[2] if "://" in tiles else None)
        folium.TileLayer(tiles, attr=attribution, name="basemap").add_to(m)

    if chunks is not None and len(chunks):
        frame = chunks[[group_column, "chunk_id", "num_rows", chunks.geometry.name]].copy()
        frame[group_column] = frame[group_column].astype(str)

        def chunk_style(feature: dict[str, Any]) -> dict[str, Any]:
            color = color_of.get(feature["properties"][group_column], ROW_COLOR)
            return {"color": color, "weight": 1.5, "fillColor": color, "fillOpacity": 0.25,
                    "className": CHUNK_CLASS}  # fmt: skip

        folium.GeoJson(
            frame,
            name="chunks",
            style_function=chunk_style,
            tooltip=folium.GeoJsonTooltip(
                fields=[group_column, "chunk_id", "num_rows"],
                aliases=[group_label, "chunk", "rows"],
            ),
        ).add_to(m)

    shown = _display_rows(rows, group_column)
    if len(shown):
        by_group = group_column if group_column in shown.columns else None

        def row_style(feature: dict[str, Any]) -> dict[str, Any]:
            key = feature["properties"].get(by_group) if by_group else None
            fill = color_of.get(key, ROW_COLOR) if key is not None else ROW_COLOR
            point = (feature.get("geometry") or {}).get("type") == "Point"
            return {"color": "#ffffff" if by_group and point else fill, "weight": 1,
                    "fill": True, "fillColor": fill, "fillOpacity": 0.8 if point else 0.3,
                    "className": ROW_CLASS}  # fmt: skip

        fields = [c for c in shown.columns if c != shown.geometry.name]
        folium.GeoJson(
            shown,
            name="sample rows",
            style_function=row_style,
            marker=folium.CircleMarker(radius=4 if by_group else 3),
            tooltip=folium.GeoJsonTooltip(fields=fields) if fields else None,
        ).add_to(m)

    note = f"{len(shown):,} sample row(s) drawn"
    if chunks is not None:
        note += f" over {len(chunks):,} chunk bbox(es)"
    Legend(
        title=title,
        subtitle=subtitle,
        group_label=group_label,
        groups=groups,
        colors=colors,
        total_rows=total_rows,
        has_chunks=chunks is not None,
        note=note,
    ).add_to(m)
    folium.LayerControl(position="topleft", collapsed=False).add_to(m)
    bounds = _bounds([chunks, shown])
    if bounds is not None:
        # room for the layer control (top left) and the legend (top right)
        m.fit_bounds(
            bounds, padding_top_left=(150, 20), padding_bottom_right=(300, 20), max_zoom=14
        )
    return m
