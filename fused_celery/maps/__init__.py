"""Interactive HTML maps of tables and frames that work offline (folium + vendored Leaflet).

``show_table(table_or_url)`` and ``show_frame(gdf)`` write one self-contained HTML file and
return a :class:`MapFile` (its ``path``; shown inline in Jupyter). Modules: ``table_map`` (the
two functions), ``render`` (the folium map), ``offline`` (inlined assets, the no-network
check), ``output`` (file locations, the overwrite rule). ``assets/`` holds the vendored Leaflet.
"""

from fused_celery.maps.offline import OfflineAssetError
from fused_celery.maps.output import MapFile, MapFileExistsError
from fused_celery.maps.table_map import show_frame, show_table

__all__ = ["MapFile", "MapFileExistsError", "OfflineAssetError", "show_frame", "show_table"]
