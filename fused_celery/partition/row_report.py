""":class:`RowReport`: what an ingest did to its rows — rows in and out, the rows dropped by
reason and the rows repaired — counted per slice by prepare, added up for the job, and shown
everywhere a user looks: the job log, ``get_results()["report"]``, the table's metadata
(``Table.ingest_report``) and a warning from ``run_local``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, computed_field

if TYPE_CHECKING:
    from fused_celery.partition.prepare import PrepareReport

DROP_REASONS = {
    "dropped_null_geometries": "null or empty geometry",
    "dropped_out_of_bounds": "outside the WGS84 bounds [-180, 180] x [-90, 90]",
}
"""The report's drop counters and what they mean."""

REPAIRS = {
    "made_valid": "invalid geometry made valid",
    "clamped_to_bounds": "bbox clamped to the WGS84 bounds (coordinates past them by rounding)",
}
"""The report's repair counters and what they mean."""


class RowReport(BaseModel):
    """Counts of what preparation did to the rows of a slice or of a whole ingest.

    input_rows / output_rows: rows read / rows left to partition. dropped_null_geometries,
    dropped_out_of_bounds: rows dropped, by reason (:data:`DROP_REASONS`). made_valid,
    clamped_to_bounds: rows repaired (:data:`REPAIRS`). subdivided_rows / exploded_rows_added:
    rows cut into pieces / rows added by ``explode_geometries``. reprojected_from: the CRSs
    reprojected to EPSG:4326.
    """

    # extra="ignore": its JSON carries the computed ``dropped`` / ``repaired``, read back here.
    model_config = ConfigDict(frozen=True, extra="ignore")

    input_rows: int = 0
    output_rows: int = 0
    dropped_null_geometries: int = 0
    dropped_out_of_bounds: int = 0
    made_valid: int = 0
    clamped_to_bounds: int = 0
    subdivided_rows: int = 0
    exploded_rows_added: int = 0
    reprojected_from: tuple[str, ...] = ()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def dropped(self) -> dict[str, int]:
        """Rows dropped, by reason (only reasons with rows)."""
        return {k[len("dropped_") :]: getattr(self, k) for k in DROP_REASONS if getattr(self, k)}

    @computed_field  # type: ignore[prop-decorator]
    @property
    def repaired(self) -> dict[str, int]:
        """Rows repaired, by repair (only repairs with rows)."""
        return {k: getattr(self, k) for k in REPAIRS if getattr(self, k)}

    @classmethod
    def of(cls, report: PrepareReport) -> RowReport:
        """The counts of one prepared frame's :class:`~.prepare.PrepareReport` (its notes left
        out)."""
        counts = {k: v for k, v in dataclasses.asdict(report).items() if k in COUNTERS}
        crs = report.reprojected_from
        return cls(**counts, reprojected_from=(crs,) if crs else ())

    @classmethod
    def total(cls, reports: Iterable[RowReport]) -> RowReport:
        """The counts of ``reports`` added up (``reprojected_from``: every CRS seen, sorted)."""
        counts: dict[str, int] = {}
        crs: set[str] = set()
        for r in reports:
            for name, value in r:
                if name == "reprojected_from":
                    crs.update(value)
                else:
                    counts[name] = counts.get(name, 0) + int(value)
        return cls(**counts, reprojected_from=tuple(sorted(crs)))

    @property
    def noteworthy(self) -> bool:
        """Whether any row was dropped or repaired (what a user must be told)."""
        return bool(self.dropped or self.repaired)

    def summary(self) -> str:
        """One line: ``rows: 10 in, 9 out; dropped 1 (1 outside the WGS84 bounds ...);
        repaired 1 (...)``."""
        text = f"rows: {self.input_rows} in, {self.output_rows} out"
        for label, counts, names in (
            ("dropped", self.dropped, {k[len("dropped_") :]: v for k, v in DROP_REASONS.items()}),
            ("repaired", self.repaired, REPAIRS),
        ):
            if counts:
                parts = ", ".join(f"{n} {names[k]}" for k, n in counts.items())
                text += f"; {label} {sum(counts.values())} ({parts})"
        return text


COUNTERS = frozenset(n for n, f in RowReport.model_fields.items() if f.annotation in (int, "int"))
"""The integer counters of :class:`RowReport` (what :meth:`RowReport.of` copies)."""
