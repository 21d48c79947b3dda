"""Exports pathologists and hospital systems read: JSON, QuPath GeoJSON, CSV, overview PNG.

All coordinates are level-0 pixels with the origin at the top-left, as QuPath expects.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from services.aggregator.errors import ExportLocationError
from services.common import objectstore
from services.common.objectstore import S3Config, is_s3_uri

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
    "mitosis_probability",
    "atypical_probability",
)
MITOSIS_RGB = (220, 20, 20)
ATYPICAL_RGB = (250, 150, 0)  # orange: atypical figures stand out from the red ones
CLASS_STYLE = {"mitosis": ("Mitosis", MITOSIS_RGB), "atypical_mitosis": ("Atypical mitosis", ATYPICAL_RGB)}


def _style(class_name: str) -> tuple[str, tuple[int, int, int]]:
    return CLASS_STYLE.get(class_name, (class_name.capitalize(), MITOSIS_RGB))


HOTSPOT_RGB = (0, 160, 60)
QC_RGB = {"blur": (120, 120, 120), "pen": (40, 90, 200)}  # excluded tiles: grey out of focus, blue under ink


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
        name, colour = _style(det["class"])
        measurements = {"score": det["score"], "centroid_x_px": det["x_px"], "centroid_y_px": det["y_px"]}
        for key in ("mitosis_probability", "atypical_probability"):
            if det.get(key) is not None:  # the second stage's; null without one
                measurements[key] = det[key]
        features.append(
            {
                "type": "Feature",
                "id": f"mitosis-{det['id']}",
                "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": name, "color": list(colour)},
                    "measurements": measurements,
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


def _blank_if_none(value: Any) -> Any:
    return "" if value is None else value


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
            _blank_if_none(det.get("mitosis_probability")),
            _blank_if_none(det.get("atypical_probability")),
        ]
        for det in result["detections"]
    ]


def csv_text(result: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(detection_rows(result))
    return out.getvalue()


def write_csv(result: dict[str, Any], path: Path) -> None:
    path.write_text(csv_text(result), newline="")


def documents(result: dict[str, Any], slide_png: bytes = b"") -> dict[str, tuple[bytes, str]]:
    """The exports of a result by file name, with their media types; the overview picture too when
    the slide's own picture (`slide_png`, the tiler's overview) is given."""
    docs = {
        "result.json": (json.dumps(result, indent=1).encode(), "application/json"),
        "result.geojson": (json.dumps(geojson_document(result)).encode(), "application/geo+json"),
        "result.csv": (csv_text(result).encode(), "text/csv"),
    }
    if slide_png:
        docs["overview.png"] = (overview_png(result, slide_png), "image/png")
    return docs


def overview_png(result: dict[str, Any], slide_png: bytes) -> bytes:
    """The overview picture (PNG) of a result, drawn on the slide's picture (PNG)."""
    decoded = cv2.imdecode(np.frombuffer(slide_png, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ExportLocationError("the slide picture sent for the overview is not a PNG")
    drawn = render_overview(result, cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB))
    ok, png = cv2.imencode(".png", cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
    assert ok
    return bytes(png.tobytes())


def publish(result: dict[str, Any], location: str, local_root: Path, slide_png: bytes = b"") -> dict[str, str]:
    """Write the exports to `location` (s3://bucket/prefix, or a folder under `local_root`).

    Returns where each one went. S3 objects are written one by one, result.json last, so a reader
    that waits for result.json finds the others complete."""
    written: dict[str, str] = {}
    docs = documents(result, slide_png)
    order = [*(name for name in docs if name != "result.json"), "result.json"]
    if is_s3_uri(location):
        config = S3Config.from_env()
        for name in order:
            data, media_type = docs[name]
            uri = f"{location.rstrip('/')}/{name}"
            objectstore.put_bytes(uri, data, media_type, config)
            written[name] = uri
        return written
    root = local_root.resolve()
    folder = (root / location).resolve()
    if not folder.is_relative_to(root):
        raise ExportLocationError(f"{location}: outside the aggregator's output root; give a relative folder")
    folder.mkdir(parents=True, exist_ok=True)
    for name in order:
        path = folder / name
        tmp = path.with_name(f".{name}.partial")
        tmp.write_bytes(docs[name][0])
        tmp.replace(path)
        written[name] = str(path)
    return written


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
    _draw_qc_layer(canvas, result.get("qc"), scale)
    for det in result["detections"]:
        centre = (round(det["x_px"] * scale), round(det["y_px"] * scale))
        cv2.circle(canvas, centre, radius, _style(det["class"])[1], -1, cv2.LINE_AA)
    caption_h = 44
    out = np.full((canvas.shape[0] + caption_h, canvas.shape[1], 3), 255, np.uint8)
    out[: canvas.shape[0]] = canvas
    text = (
        f"{result['mitosis_count']} mitoses | hotspot {h['count']} / {h['fields']} HPF | "
        f"score {result['mitotic_score']} | {result['density_per_mm2']:.2f} /mm2 tissue"
    )
    if result.get("atypical_count"):
        text += f" | {result['atypical_count']} atypical (orange)"
    excluded_mm2 = (result.get("qc") or {}).get("excluded_area_mm2", 0)
    if excluded_mm2:
        text += f" | QC left out {excluded_mm2:.2f} mm2"
    font_scale = max(0.35, min(0.7, canvas.shape[1] / 1400))
    cv2.putText(
        out, text, (8, canvas.shape[0] + 28), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (30, 30, 30), 1, cv2.LINE_AA
    )
    return out


def _draw_qc_layer(canvas: npt.NDArray[np.uint8], qc: dict[str, Any] | None, scale: float) -> None:
    """Tiles quality control left out, shaded in their reason's colour with a cross."""
    for group in (qc or {}).get("excluded", []):
        colour = QC_RGB.get(group["reason"], (120, 120, 120))
        for x0, y0, x1, y1 in group.get("boxes_level0_px", []):
            p0 = (round(x0 * scale), round(y0 * scale))
            p1 = (round(x1 * scale) - 1, round(y1 * scale) - 1)
            region = canvas[max(p0[1], 0) : p1[1] + 1, max(p0[0], 0) : p1[0] + 1]
            region[:] = (0.5 * region + 0.5 * np.asarray(colour, np.float32)).astype(np.uint8)
            cv2.rectangle(canvas, p0, p1, colour, 1)
            cv2.line(canvas, p0, p1, colour, 1)


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
