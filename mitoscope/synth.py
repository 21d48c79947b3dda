"""Synthetic H&E slides with planted mitoses and look-alikes, with their ground truth.

The painter works in level-0 pixels at a fixed resolution (0.25 µm/px by default): tissue
islands of pink stroma with fibres, tumour nests of purple nuclei with chromatin texture, then
mitotic figures (dark, condensed, irregular chromatin; some as anaphase pairs) and hard
negatives (round dark lymphocytes, apoptotic bodies). Everything is drawn from one seeded
generator, so a seed always gives the same pixels and the same truth.

`mitoscope.slide_files` writes a painted image as a slide file with its truth.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

TRUTH_FORMAT = "mitoscope-synth-truth/1"
DEFAULT_MPP_UM_PER_PX = 0.25
GLASS_RGB = (242, 240, 244)
STROMA_RGB = (232, 150, 192)
CYTOPLASM_RGB = (214, 160, 205)
HEMATOXYLIN_RGB = (95, 60, 150)
MITOSIS_RGB = (38, 22, 70)
LYMPHOCYTE_RGB = (58, 40, 120)
APOPTOTIC_CYTOPLASM_RGB = (222, 105, 165)
MIN_MITOSIS_SPACING_UM = 40.0

MITOSIS_KINDS = ("metaphase", "prometaphase", "anaphase")
LOOKALIKE_KINDS = ("lymphocyte", "apoptotic_body")


@dataclass(frozen=True)
class PlantedFigure:
    """One planted object; `x_px`, `y_px` is its centre in level-0 pixels."""

    kind: str
    x_px: float
    y_px: float
    box_px: tuple[float, float, float, float]


@dataclass(frozen=True)
class SynthParams:
    width_px: int
    height_px: int
    seed: int
    mpp_um_per_px: float = DEFAULT_MPP_UM_PER_PX
    tissue_fraction: float = 0.5
    nuclei_per_mm2: float = 3500.0
    mitoses_per_mm2: float = 6.0
    hotspot_boost: float = 6.0
    lookalikes_per_mm2: float = 14.0


@dataclass
class SynthImage:
    rgb: npt.NDArray[np.uint8]
    params: SynthParams
    mitoses: list[PlantedFigure] = field(default_factory=list)
    lookalikes: list[PlantedFigure] = field(default_factory=list)
    tissue_area_mm2: float = 0.0

    def truth(self) -> dict[str, object]:
        return {
            "format": TRUTH_FORMAT,
            "params": asdict(self.params),
            "width_px": self.params.width_px,
            "height_px": self.params.height_px,
            "mpp_um_per_px": self.params.mpp_um_per_px,
            "tissue_area_mm2": round(self.tissue_area_mm2, 4),
            "mitosis_count": len(self.mitoses),
            "mitoses": [asdict(m) for m in self.mitoses],
            "lookalikes": [asdict(m) for m in self.lookalikes],
        }


def _smooth_field(rng: np.random.Generator, height: int, width: int, sigma: float) -> npt.NDArray[np.float32]:
    """Low-frequency noise in [0, 1], of the given size."""
    noise = rng.standard_normal((height, width)).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), sigma)
    lo, hi = float(blurred.min()), float(blurred.max())
    return (blurred - lo) / max(hi - lo, 1e-6)


def _tissue_mask_lowres(rng: np.random.Generator, params: SynthParams, scale: int) -> npt.NDArray[np.float32]:
    h, w = max(params.height_px // scale, 8), max(params.width_px // scale, 8)
    field_ = _smooth_field(rng, h, w, sigma=max(min(h, w) / 10, 2.0))
    # Fade to glass at the edges so islands sit inside the slide.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    edge = np.minimum.reduce([xx, yy, w - 1 - xx, h - 1 - yy]) / max(min(h, w) * 0.12, 1.0)
    field_ *= np.clip(edge, 0.0, 1.0)
    threshold = float(np.quantile(field_, 1.0 - params.tissue_fraction))
    return (field_ > threshold).astype(np.float32)


def _paint_blob(
    canvas: npt.NDArray[np.uint8],
    alpha: npt.NDArray[np.float32],
    x0: int,
    y0: int,
    rgb: tuple[int, int, int],
) -> None:
    """Alpha-composite a colour through `alpha` (a small patch) at (x0, y0), clipped."""
    h, w = alpha.shape
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + w, canvas.shape[1]), min(y0 + h, canvas.shape[0])
    if cx1 <= cx0 or cy1 <= cy0:
        return
    a = alpha[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0, None]
    region = canvas[cy0:cy1, cx0:cx1].astype(np.float32)
    color = np.asarray(rgb, dtype=np.float32)
    canvas[cy0:cy1, cx0:cx1] = (region * (1.0 - a) + color * a).astype(np.uint8)


def _ellipse_alpha(size: int, axes: tuple[float, float], angle_deg: float, blur: float) -> npt.NDArray[np.float32]:
    patch = np.zeros((size, size), np.float32)
    c = size // 2
    cv2.ellipse(patch, (c, c), (max(int(axes[0]), 1), max(int(axes[1]), 1)), angle_deg, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(patch, (0, 0), blur) if blur > 0 else patch


def _nucleus(rng: np.random.Generator, px_per_um: float) -> npt.NDArray[np.float32]:
    a_um = rng.uniform(3.0, 5.5)
    b_um = a_um * rng.uniform(0.6, 0.95)
    a, b = a_um * px_per_um, b_um * px_per_um
    size = int(2 * a + 8) | 1
    shape = _ellipse_alpha(size, (a, b), rng.uniform(0, 180), blur=1.2)
    texture = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 1.0)
    rim = shape - cv2.erode(shape, np.ones((3, 3), np.uint8), iterations=2)
    strength = rng.uniform(0.45, 0.7)
    return np.clip(shape * (strength + 0.5 * (texture - 0.5)) + 0.25 * rim, 0.0, 0.95)


def _chromatin_band(
    rng: np.random.Generator,
    patch: npt.NDArray[np.float32],
    centre: tuple[float, float],
    length_px: float,
    width_px: float,
    angle_rad: float,
) -> None:
    """Many small dark blobs (chromosomes) along a band: a metaphase plate."""
    n = int(length_px * width_px / 9) + 10
    dx, dy = math.cos(angle_rad), math.sin(angle_rad)
    for _ in range(n):
        t = rng.uniform(-0.5, 0.5) * length_px
        s = rng.normal(0.0, width_px / 4)
        x = centre[0] + t * dx - s * dy
        y = centre[1] + t * dy + s * dx
        r = rng.uniform(1.5, 3.5)
        cv2.circle(patch, (int(x), int(y)), int(r), 1.0, -1)
    # A few protruding chromosome arms make the outline irregular.
    for _ in range(rng.integers(4, 9)):
        t = rng.uniform(-0.5, 0.5) * length_px
        x = centre[0] + t * dx
        y = centre[1] + t * dy
        arm = rng.uniform(0.4, 0.9) * width_px * rng.choice([-1, 1])
        cv2.line(patch, (int(x), int(y)), (int(x - arm * dy), int(y + arm * dx)), 1.0, 2)


def _mitosis(
    rng: np.random.Generator, kind: str, px_per_um: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], tuple[float, float, float, float]]:
    """Returns (halo alpha, chromatin alpha, box relative to the patch centre)."""
    size = int(26 * px_per_um) | 1
    c = size / 2
    chrom = np.zeros((size, size), np.float32)
    angle = rng.uniform(0, math.pi)
    length = rng.uniform(8.0, 13.0) * px_per_um
    width = rng.uniform(2.2, 3.5) * px_per_um
    if kind == "metaphase":
        _chromatin_band(rng, chrom, (c, c), length, width, angle)
    elif kind == "anaphase":
        gap = rng.uniform(3.0, 4.5) * px_per_um
        for sign in (-1, 1):
            off = (sign * gap * -math.sin(angle), sign * gap * math.cos(angle))
            _chromatin_band(rng, chrom, (c + off[0], c + off[1]), length * 0.9, width * 0.7, angle)
    else:  # prometaphase: an irregular clump of condensed chromosomes
        radius = rng.uniform(3.5, 5.0) * px_per_um
        for _ in range(int(radius * radius / 5)):
            r = radius * math.sqrt(rng.uniform(0, 1))
            t = rng.uniform(0, 2 * math.pi)
            x, y = c + r * math.cos(t), c + r * math.sin(t)
            t2 = rng.uniform(0, 2 * math.pi)
            arm = rng.uniform(2.0, 6.0)
            cv2.line(
                chrom,
                (int(x), int(y)),
                (int(x + arm * math.cos(t2)), int(y + arm * math.sin(t2))),
                1.0,
                2,
            )
    chrom = cv2.GaussianBlur(chrom, (0, 0), 0.8) * rng.uniform(0.85, 0.95)
    ys, xs = np.nonzero(chrom > 0.3)
    box = (xs.min() - c, ys.min() - c, xs.max() + 1 - c, ys.max() + 1 - c)
    halo_axes = (max(-box[0], box[2]) + 4 * px_per_um, max(-box[1], box[3]) + 4 * px_per_um)
    halo = _ellipse_alpha(size, halo_axes, 0, blur=3.0) * 0.85
    return halo, np.clip(chrom, 0, 0.95), box


def _lookalike(
    rng: np.random.Generator, kind: str, px_per_um: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], tuple[int, int, int]]:
    """Returns (background alpha, dark alpha, background colour)."""
    size = int(16 * px_per_um) | 1
    c = size // 2
    if kind == "lymphocyte":
        r = rng.uniform(2.8, 3.6) * px_per_um
        back = _ellipse_alpha(size, (r + 3, r + 3), 0, blur=1.0) * 0.5
        dark = _ellipse_alpha(size, (r, r * rng.uniform(0.9, 1.0)), rng.uniform(0, 180), 0.8)
        return back, dark * rng.uniform(0.8, 0.9), CYTOPLASM_RGB
    r = rng.uniform(3.5, 5.0) * px_per_um
    back = _ellipse_alpha(size, (r, r * 0.9), rng.uniform(0, 180), blur=1.0) * 0.9
    dark = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(1, 4)):
        fx, fy = c + rng.normal(0, r / 3), c + rng.normal(0, r / 3)
        cv2.circle(dark, (int(fx), int(fy)), int(rng.uniform(1.2, 2.2) * px_per_um), 1.0, -1)
    dark = cv2.GaussianBlur(dark, (0, 0), 0.8) * 0.9
    return back, dark, APOPTOTIC_CYTOPLASM_RGB


def _sample_positions(
    rng: np.random.Generator,
    weights_lowres: npt.NDArray[np.float32],
    scale: int,
    count: int,
    min_spacing_px: float,
    taken: list[tuple[float, float]],
    max_tries: int = 50,
) -> list[tuple[float, float]]:
    flat = weights_lowres.ravel().astype(np.float64)
    if count <= 0 or flat.sum() <= 0:
        return []
    prob = flat / flat.sum()
    w = weights_lowres.shape[1]
    out: list[tuple[float, float]] = []
    for _ in range(count):
        for _ in range(max_tries):
            idx = int(rng.choice(flat.size, p=prob))
            y = (idx // w + rng.uniform(0, 1)) * scale
            x = (idx % w + rng.uniform(0, 1)) * scale
            if all((x - tx) ** 2 + (y - ty) ** 2 >= min_spacing_px**2 for tx, ty in taken):
                out.append((x, y))
                taken.append((x, y))
                break
    return out


def synthesize(params: SynthParams) -> SynthImage:
    """Paint a synthetic H&E image with planted mitoses; deterministic for `params.seed`."""
    if params.width_px < 256 or params.height_px < 256:
        raise ValueError("synthetic slides must be at least 256 x 256 px")
    rng = np.random.default_rng(params.seed)
    px_per_um = 1.0 / params.mpp_um_per_px
    h, w = params.height_px, params.width_px
    scale = 32  # low-resolution grid for the fields that vary slowly
    tissue_low = _tissue_mask_lowres(rng, params, scale)
    nests_low = _smooth_field(rng, tissue_low.shape[0], tissue_low.shape[1], sigma=3.0)
    # Smooth the coarse mask before thresholding so island outlines are curves, not steps.
    tissue = cv2.resize(tissue_low, (w, h), interpolation=cv2.INTER_LINEAR)
    tissue = cv2.GaussianBlur(tissue, (0, 0), scale / 2)
    tissue = cv2.GaussianBlur((tissue > 0.5).astype(np.float32), (0, 0), 3.0)

    # Stroma with fibres (streaky noise) on glass.
    fib_scale = 4
    fib = rng.standard_normal((h // fib_scale + 1, w // fib_scale + 1)).astype(np.float32)
    fib = cv2.GaussianBlur(fib, (0, 0), sigmaX=5.0, sigmaY=0.8)
    fib = cv2.resize(fib, (w, h), interpolation=cv2.INTER_LINEAR)[:h, :w]
    nests = cv2.resize(nests_low, (w, h), interpolation=cv2.INTER_LINEAR)
    canvas = np.empty((h, w, 3), np.uint8)
    glass = np.asarray(GLASS_RGB, np.float32)
    stroma = np.asarray(STROMA_RGB, np.float32)
    cyto = np.asarray(CYTOPLASM_RGB, np.float32)
    band = 1024
    for y0 in range(0, h, band):
        y1 = min(y0 + band, h)
        t = tissue[y0:y1, :, None]
        nest = np.clip((nests[y0:y1, :, None] - 0.45) * 4.0, 0.0, 1.0)
        tissue_rgb = stroma * (1 - nest) + cyto * nest
        tissue_rgb = tissue_rgb * (1.0 + 0.09 * fib[y0:y1, :, None])
        canvas[y0:y1] = np.clip(glass * (1 - t) + tissue_rgb * t, 0, 255).astype(np.uint8)

    tissue_px = float((tissue > 0.5).sum())
    tissue_mm2 = tissue_px * (params.mpp_um_per_px / 1000.0) ** 2

    # Nuclei, denser in tumour nests.
    nuclei_weight = tissue_low * (0.15 + nests_low**2)
    n_nuclei = int(params.nuclei_per_mm2 * tissue_mm2)
    flat = nuclei_weight.ravel().astype(np.float64)
    lw = nuclei_weight.shape[1]
    if n_nuclei > 0 and flat.sum() > 0:
        cells = rng.choice(flat.size, size=n_nuclei, p=flat / flat.sum())
        for idx in cells:
            alpha = _nucleus(rng, px_per_um)
            y = (idx // lw + rng.uniform(0, 1)) * scale
            x = (idx % lw + rng.uniform(0, 1)) * scale
            s = alpha.shape[0] // 2
            _paint_blob(canvas, alpha, int(x) - s, int(y) - s, HEMATOXYLIN_RGB)

    # Mitoses: a background rate in tissue plus a hotspot, spaced apart so truth is unambiguous.
    hy, hx = np.unravel_index(int(np.argmax(tissue_low * nests_low)), tissue_low.shape)
    yy, xx = np.mgrid[0 : tissue_low.shape[0], 0 : tissue_low.shape[1]].astype(np.float32)
    hotspot_sigma = max(min(tissue_low.shape) / 6.0, 1.0)
    hot = np.exp(-((yy - hy) ** 2 + (xx - hx) ** 2) / (2 * hotspot_sigma**2))
    inner = (cv2.erode(tissue_low, np.ones((3, 3), np.uint8)) > 0.5).astype(np.float32)
    if inner.sum() == 0:
        inner = tissue_low
    mitosis_weight = inner * (1.0 + params.hotspot_boost * hot)
    n_mitoses = round(params.mitoses_per_mm2 * tissue_mm2)
    taken: list[tuple[float, float]] = []
    spacing_px = MIN_MITOSIS_SPACING_UM * px_per_um
    mitoses: list[PlantedFigure] = []
    for x, y in _sample_positions(rng, mitosis_weight, scale, n_mitoses, spacing_px, taken):
        kind = str(rng.choice(MITOSIS_KINDS))
        halo, chrom, box = _mitosis(rng, kind, px_per_um)
        s = halo.shape[0] // 2
        _paint_blob(canvas, halo, int(x) - s, int(y) - s, CYTOPLASM_RGB)
        _paint_blob(canvas, chrom, int(x) - s, int(y) - s, MITOSIS_RGB)
        cx, cy = int(x) - s + halo.shape[0] / 2, int(y) - s + halo.shape[0] / 2
        bx = (cx + box[0], cy + box[1], cx + box[2], cy + box[3])
        mitoses.append(
            PlantedFigure(
                kind, round((bx[0] + bx[2]) / 2, 1), round((bx[1] + bx[3]) / 2, 1), tuple(round(v, 1) for v in bx)
            )
        )

    lookalikes: list[PlantedFigure] = []
    n_look = round(params.lookalikes_per_mm2 * tissue_mm2)
    for x, y in _sample_positions(rng, inner, scale, n_look, 20 * px_per_um, taken):
        kind = str(rng.choice(LOOKALIKE_KINDS))
        back, dark, back_rgb = _lookalike(rng, kind, px_per_um)
        s = back.shape[0] // 2
        _paint_blob(canvas, back, int(x) - s, int(y) - s, back_rgb)
        _paint_blob(canvas, dark, int(x) - s, int(y) - s, LYMPHOCYTE_RGB)
        r = s * 0.6
        lookalikes.append(
            PlantedFigure(kind, float(int(x)), float(int(y)), (int(x) - r, int(y) - r, int(x) + r, int(y) + r))
        )

    # Scanner optics and sensor noise, band by band to bound memory.
    for y0 in range(0, h, band):
        y1 = min(y0 + band, h)
        lo, hi = max(y0 - 8, 0), min(y1 + 8, h)
        blurred = cv2.GaussianBlur(canvas[lo:hi], (0, 0), 0.7)[y0 - lo : y0 - lo + (y1 - y0)]
        noise = rng.integers(-4, 5, size=blurred.shape, dtype=np.int16)
        canvas[y0:y1] = np.clip(blurred.astype(np.int16) + noise, 0, 255).astype(np.uint8)

    return SynthImage(canvas, params, mitoses, lookalikes, tissue_mm2)
