"""Exports pathologists and hospital systems read: JSON, QuPath GeoJSON, CSV, overview PNG.

All coordinates are level-0 pixels with the origin at the top-left, as QuPath expects.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

CSV_COLUMNS = (
    "id",
    "x_px",
    "y_px",
    "x_um",
    "y_um",
    "box_x0_px",
    "box_y0_px",
    "box_x1_px",
    "box_y1_px",
    "score",
    "class",
    "tile_index",
    "in_hotspot",
)
MITOSIS_RGB = (220, 20, 20)
HOTSPOT_RGB = (0, 160, 60)


def _in_hotspot(det: dict[str, Any], hotspot: dict[str, Any]) -> bool:
    return (
        hotspot["x_px"] <= det["x_px"] < hotspot["x_px"] + hotspot["width_px"]
        and hotspot["y_px"] <= det["y_px"] < hotspot["y_px"] + hotspot["height_px"]
    )


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=1))


def geojson_document(result: dict[str, Any]) -> dict[str, Any]:
    """A FeatureCollection QuPath imports: one detection per mitosis, the hotspot as annotation."""
    features: list[dict[str, Any]] = []
    for det in result["detections"]:
        x0, y0, x1, y1 = det["box_px"]
        features.append(
            {
                "type": "Feature",
                "id": f"mitosis-{det['id']}",
                "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": det["class"].capitalize(), "color": list(MITOSIS_RGB)},
                    "measurements": {"score": det["score"], "centroid_x_px": det["x_px"], "centroid_y_px": det["y_px"]},
                },
            }
        )
    h = result["hotspot"]
    x0, y0, x1, y1 = h["x_px"], h["y_px"], h["x_px"] + h["width_px"], h["y_px"] + h["height_px"]
    features.append(
        {
            "type": "Feature",
            "id": "hotspot",
            "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
            "properties": {
                "objectType": "annotation",
                "name": f"Hotspot ({h['fields']} HPF): {h['count']} mitoses",
                "classification": {"name": "Hotspot", "color": list(HOTSPOT_RGB)},
                "measurements": {
                    "mitoses": h["count"],
                    "area_mm2": round(h["window_area_mm2"], 4),
                    "mitotic_score": result["mitotic_score"],
                },
            },
        }
    )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(geojson_document(result)))


def detection_rows(result: dict[str, Any]) -> list[list[Any]]:
    """The CSV rows (under CSV_COLUMNS) of a result: one per mitosis."""
    mpp = result["slide"]["mpp_um_per_px"]
    return [
        [
            det["id"],
            det["x_px"],
            det["y_px"],
            round(det["x_px"] * mpp, 2),
            round(det["y_px"] * mpp, 2),
            *det["box_px"],
            det["score"],
            det["class"],
            det["tile_index"],
            int(_in_hotspot(det, result["hotspot"])),
        ]
        for det in result["detections"]
    ]


def write_csv(result: dict[str, Any], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(detection_rows(result))


def render_overview(result: dict[str, Any], thumbnail: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The slide with a red dot per mitosis and the hotspot outlined, plus a caption."""
    slide = result["slide"]
    scale = thumbnail.shape[1] / slide["width_px"]
    canvas = thumbnail.copy()
    radius = max(3, round(min(canvas.shape[:2]) / 150))
    h = result["hotspot"]
    p0 = (round(h["x_px"] * scale), round(h["y_px"] * scale))
    p1 = (round((h["x_px"] + h["width_px"]) * scale) - 1, round((h["y_px"] + h["height_px"]) * scale) - 1)
    cv2.rectangle(canvas, p0, p1, HOTSPOT_RGB, max(2, radius // 2))
    for det in result["detections"]:
        centre = (round(det["x_px"] * scale), round(det["y_px"] * scale))
        cv2.circle(canvas, centre, radius, MITOSIS_RGB, -1, cv2.LINE_AA)
    caption_h = 44
    out = np.full((canvas.shape[0] + caption_h, canvas.shape[1], 3), 255, np.uint8)
    out[: canvas.shape[0]] = canvas
    text = (
        f"{result['mitosis_count']} mitoses | hotspot {h['count']} / {h['fields']} HPF | "
        f"score {result['mitotic_score']} | {result['density_per_mm2']:.2f} /mm2 tissue"
    )
    font_scale = max(0.35, min(0.7, canvas.shape[1] / 1400))
    cv2.putText(
        out, text, (8, canvas.shape[0] + 28), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (30, 30, 30), 1, cv2.LINE_AA
    )
    return out


def write_png(rgb: npt.NDArray[np.uint8], path: Path) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def render_gallery(crops: list[tuple[npt.NDArray[np.uint8], float]], columns: int = 6) -> npt.NDArray[np.uint8]:
    """Tiles of detections (crop with its box drawn, score written), as in the paper's Fig. 6."""
    if not crops:
        return np.full((64, 320, 3), 255, np.uint8)
    size = crops[0][0].shape[0]
    rows = (len(crops) + columns - 1) // columns
    sheet = np.full((rows * (size + 4), columns * (size + 4), 3), 255, np.uint8)
    for i, (crop, score) in enumerate(crops):
        r, c = divmod(i, columns)
        y, x = r * (size + 4), c * (size + 4)
        sheet[y : y + size, x : x + size] = crop
        cv2.putText(
            sheet, f"{score:.2f}", (x + 4, y + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 2, cv2.LINE_AA
        )
        cv2.putText(
            sheet, f"{score:.2f}", (x + 4, y + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (20, 20, 20), 1, cv2.LINE_AA
        )
    return sheet
