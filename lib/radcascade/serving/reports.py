"""Per-lesion findings reports: what 3D Slicer's module cannot show, as a file a user can open.

The module shows a result's label map and prints the rest of the answer (class probabilities,
volumes, uncertainty, notes) to Slicer's Python console.  Every cascade / classify answer on a
datastore study is therefore also kept as a small report, JSON and CSV, under
``<studies>/.radcascade/reports/``, and served at ``GET /report/{image_id}?format=csv|json``
(open it in a browser or a spreadsheet).  The answer's ``report`` field gives the address.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from radcascade.serving.datastore import check_id
from radcascade.serving.errors import client_error
from radcascade.serving.routes import ErrorDetail
from radcascade.files import write_text_atomic

REPORT_FORMATS = ("csv", "json")

CSV_COLUMNS = (
    "image_id", "lesion", "class", "class_probability", "model_class", "drawn_class", "volume_ml",
    "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "extent_x_mm", "extent_y_mm", "extent_z_mm",
    "segmentation_probability", "entropy", "view_disagreement",
)


@dataclass(frozen=True)
class ReportStore:
    """Reports of one datastore, one JSON and one CSV file per study (the latest answer wins)."""

    folder: Path

    @classmethod
    def for_studies(cls, studies: str | Path) -> "ReportStore":
        return cls(Path(studies) / ".radcascade" / "reports")

    def path(self, image_id: str, fmt: str) -> Path:
        return self.folder / f"{image_id}.{fmt}"

    def save(self, image_id: str, model: str, result: dict) -> str:
        """Keep ``result`` (an infer answer's JSON) as the study's report; returns its address."""
        report = {
            "image_id": image_id,
            "model": model,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "organ": result.get("organ"),
            "lesion_count": result.get("lesion_count", 0),
            "lesions": result.get("lesions", []),
            "provisional_classes": result.get("provisional_classes", False),
            "models": result.get("models", {}),
            "notes": result.get("notes", []),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path(image_id, "json"), json.dumps(report, indent=1))
        write_text_atomic(self.path(image_id, "csv"), findings_csv(image_id, report["lesions"]))
        return f"/report/{image_id}?format=csv"

    def read(self, image_id: str, fmt: str) -> str:
        if fmt not in REPORT_FORMATS:
            raise client_error(422, f"unknown report format '{fmt[:40]}' (one of {', '.join(REPORT_FORMATS)})")
        path = self.path(check_id("image id", image_id), fmt)
        if not path.is_file():
            raise client_error(404, f"no report for '{image_id}': run the cascade or classify on it first")
        return path.read_text()


def findings_csv(image_id: str, lesions: list[dict]) -> str:
    """One row per lesion, in the columns a spreadsheet user expects."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for lesion in lesions:
        cls = lesion.get("class_name")
        probs = lesion.get("probabilities") or {}
        unc = lesion.get("uncertainty") or {}
        centroid = list(lesion.get("centroid_mm") or [None] * 3)
        extent = list(lesion.get("extent_mm") or [None] * 3)
        writer.writerow([image_id, lesion.get("id"), cls, probs.get(cls, ""), lesion.get("model_class") or "",
                         lesion.get("drawn_class") or "", lesion.get("volume_ml"), *centroid, *extent,
                         lesion.get("mean_probability"), unc.get("entropy", ""), unc.get("view_disagreement", "")])
    return buffer.getvalue()


def report_router(store_of) -> APIRouter:
    """``GET /report/{image_id}``; ``store_of()`` gives the current :class:`ReportStore`."""
    router = APIRouter(prefix="/report", tags=["Report"])

    @router.get("/{image_id}", summary="Per-lesion findings of the latest cascade/classify answer on a study",
                responses={200: {"description": "The report", "content": {"text/csv": {"schema": {"type": "string"}},
                                                                          "application/json": {"schema": {}}}},
                           404: {"model": ErrorDetail, "description": "No report for this study"},
                           422: {"model": ErrorDetail, "description": "Invalid image id or unknown format"}})
    def get_report(image_id: str, format: str = "csv") -> Response:
        text = store_of().read(image_id, format)
        media = "text/csv" if format == "csv" else "application/json"
        return Response(text, media_type=media)

    return router
