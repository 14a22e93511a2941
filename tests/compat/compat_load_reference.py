"""Runs the catalogue-style UDF folder ``udf_folders/Strip_Area`` on the reference SDK's local
engine (``python compat_load_reference.py OUT.json``) and writes what it returns; used by
``test_compat_load.py``. Never imported by fused-celery's tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fused

FOLDER = Path(__file__).parent / "udf_folders" / "Strip_Area"
CASES = {
    "default": {},
    "list": {"bounds": [0, 0, 2, 1]},
    "geojson": {
        "bounds": json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": {
                            "type": "Polygon",
                            "coordinates": [[[0, 0], [3, 0], [3, 1], [0, 1], [0, 0]]],
                        },
                    }
                ],
            }
        )
    },
}


def main(path: str) -> None:
    fused.options.no_login = True  # offline
    fused.options.show.enable_tqdm = False
    from fused.core.threading_utils import isolate_streams_per_thread

    with isolate_streams_per_thread():  # see benchmarks/_reference_runner.py
        udf = fused.load(str(FOLDER))
        out = {
            "name": udf.name,
            "entrypoint": udf.entrypoint,
            "runs": {k: fused.run(udf, engine="local", **v) for k, v in CASES.items()},
        }
        frame = fused.submit(udf, [[0, 0, 1, 1], [0, 0, 2, 2]], engine="local", max_retry=0)
        out["submit_index"] = [str(v) for v in frame.index.tolist()]
        out["submit_names"] = [str(n) for n in frame.index.names]
        out["submit_results"] = frame["result"].tolist()
    Path(path).write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
