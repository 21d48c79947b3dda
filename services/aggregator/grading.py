"""High-power fields and the Nottingham mitotic score (CAP Breast Invasive protocol table)."""

from __future__ import annotations

import math

from services.aggregator.errors import GradingParameterError
from services.common.options import DEFAULT_FIELD_DIAMETER_MM

HOTSPOT_FIELDS = 10

# Field diameter (mm) -> (highest count for score 1, highest count for score 2), per 10 HPF.
CAP_MITOTIC_THRESHOLDS: dict[float, tuple[int, int]] = {
    0.40: (4, 9),
    0.44: (5, 11),
    0.50: (7, 14),
    0.55: (8, 17),
    0.59: (9, 19),
    0.63: (11, 22),
    0.69: (13, 27),
}


def field_area_mm2(field_diameter_mm: float) -> float:
    return math.pi * (field_diameter_mm / 2.0) ** 2


def thresholds_for(field_diameter_mm: float) -> tuple[int, int]:
    for diameter, thresholds in CAP_MITOTIC_THRESHOLDS.items():
        if abs(diameter - field_diameter_mm) < 1e-6:
            return thresholds
    allowed = ", ".join(f"{d:.2f}" for d in CAP_MITOTIC_THRESHOLDS)
    raise GradingParameterError(
        f"field diameter {field_diameter_mm} mm is not in the CAP table; use one of {allowed} mm"
    )


def mitotic_score(count_per_10_hpf: int, field_diameter_mm: float = DEFAULT_FIELD_DIAMETER_MM) -> int:
    """Nottingham mitotic score 1, 2 or 3 for a count in the 10-HPF hotspot."""
    score_1_max, score_2_max = thresholds_for(field_diameter_mm)
    if count_per_10_hpf <= score_1_max:
        return 1
    if count_per_10_hpf <= score_2_max:
        return 2
    return 3
