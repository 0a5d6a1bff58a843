"""The published augmentations: one of nine choices per sample.

none (3 of 9), horizontal flip, vertical flip, saturation x[0.2, 0.8], contrast x[0.2, 0.8],
brightness +-0.5, hue +-0.5 (fractions of the [0, 1] intensity range and of the hue circle, as
TensorFlow's ``tf.image.random_*`` ops that the original used).  The original drew one choice per
batch; here each sample draws its own, which gives the same mix with more variety per batch.
Flips move the labels with the image; colour changes leave them alone.
"""
from __future__ import annotations

import cv2
import numpy as np

CHOICES = ("none", "none", "none", "hflip", "vflip", "saturation", "contrast", "brightness", "hue")


def _hsv(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_BGR2HSV)  # H in degrees, S and V in [0, 1]


def _bgr(hsv: np.ndarray) -> np.ndarray:
    return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR) * 255.0, 0, 255).astype(np.uint8)


def saturation(img: np.ndarray, factor: float) -> np.ndarray:
    hsv = _hsv(img)
    hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0, 1)
    return _bgr(hsv)


def contrast(img: np.ndarray, factor: float) -> np.ndarray:
    f = img.astype(np.float32)
    mean = f.mean(axis=(0, 1), keepdims=True)
    return np.clip((f - mean) * factor + mean, 0, 255).astype(np.uint8)


def brightness(img: np.ndarray, delta: float) -> np.ndarray:
    return np.clip(img.astype(np.float32) + delta * 255.0, 0, 255).astype(np.uint8)


def hue(img: np.ndarray, delta: float) -> np.ndarray:
    hsv = _hsv(img)
    hsv[..., 0] = np.mod(hsv[..., 0] + delta * 360.0, 360.0)
    return _bgr(hsv)


def apply(choice: str, rng: np.random.Generator, img: np.ndarray, target: np.ndarray, soft: np.ndarray | None):
    """Apply one named augmentation; returns (image, target, soft) with fresh contiguous arrays."""
    if choice == "hflip":
        return img[:, ::-1].copy(), target[:, ::-1].copy(), None if soft is None else soft[:, ::-1].copy()
    if choice == "vflip":
        return img[::-1].copy(), target[::-1].copy(), None if soft is None else soft[::-1].copy()
    if choice == "saturation":
        img = saturation(img, rng.uniform(0.2, 0.8))
    elif choice == "contrast":
        img = contrast(img, rng.uniform(0.2, 0.8))
    elif choice == "brightness":
        img = brightness(img, rng.uniform(-0.5, 0.5))
    elif choice == "hue":
        img = hue(img, rng.uniform(-0.5, 0.5))
    elif choice != "none":
        raise ValueError(f"unknown augmentation {choice!r}; known: {', '.join(sorted(set(CHOICES)))}")
    return img, target, soft


def photometric_and_flip(rng: np.random.Generator, img: np.ndarray, target: np.ndarray, soft: np.ndarray | None):
    """Draw one of the nine published choices and apply it."""
    return apply(CHOICES[rng.integers(len(CHOICES))], rng, img, target, soft)


# --- What a vehicle camera sees that is not a crack -----------------------------------------------
#
# On full highway frames the plain student painted joints, lane-marking edges, wet and shadowed
# patches as crack (precision about 0.04): the crack sets hold close-ups of cracked asphalt and
# almost none of these.  Each distractor below is drawn into a training crop with the label left
# as it was (0 under the distractor), so the network sees them as road.  Opaque ones (paint, studs,
# joints, oil) are kept off the labelled crack pixels (dilated by 2 px): a crack under fresh paint is
# not visible, and a label that says crack where the picture shows paint would teach the opposite.

DISTRACTORS = ("lane_marking", "slab_joint", "road_stud", "oil_stain", "shadow", "gradient", "wet_patch",
               "repair_patch", "tar_spots")


def _line_mask(h: int, w: int, rng: np.random.Generator, width: float, offset: float = 0.0,
               where: tuple[float, float, float] | None = None) -> np.ndarray:
    """float32 HxW in [0, 1]: a straight band of ``width`` px across the whole crop at a random angle
    (or at ``where`` = (angle, cx, cy)), shifted ``offset`` px sideways."""
    theta, cx, cy = where if where is not None else (
        rng.uniform(0, np.pi), rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = np.abs((xx - cx) * np.sin(theta) - (yy - cy) * np.cos(theta) - offset)
    # Anti-aliased edge (about 1 px), as a camera's optics draw a painted edge.
    return np.clip(width / 2 + 0.5 - d, 0, 1)


def _blob_mask(h: int, w: int, rng: np.random.Generator, size: float) -> np.ndarray:
    """float32 HxW in [0, 1]: an irregular smooth blob about ``size`` px across (smoothed noise, thresholded)."""
    small = max(2, int(round(max(h, w) / max(size / 3, 1))))
    noise = cv2.resize(rng.random((small, small)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    r = np.sqrt(((xx - cx) / (size / 2)) ** 2 + ((yy - cy) / (size / 2 * rng.uniform(0.5, 1.5))) ** 2)
    field = 1.0 - r + 0.6 * (noise - 0.5)
    soft = rng.uniform(0.05, 0.25)
    return np.clip(field / soft, 0, 1).astype(np.float32)


def _blend(img: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return np.clip(img.astype(np.float32) * (1 - a) + colour * a, 0, 255).astype(np.uint8)


def _darken(img: np.ndarray, alpha: np.ndarray, factor: float) -> np.ndarray:
    f = 1.0 - (1.0 - factor) * alpha[..., None]
    return np.clip(img.astype(np.float32) * f, 0, 255).astype(np.uint8)


def lane_marking(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, bool]:
    """A white or yellow painted line (possibly worn) with sharp straight edges; opaque."""
    h, w = img.shape[:2]
    alpha = _line_mask(h, w, rng, rng.uniform(0.06, 0.35) * min(h, w))
    if rng.random() < 0.5:  # worn paint: the road shows through in patches
        alpha *= np.clip(_blob_mask(h, w, rng, max(h, w) * 3) + rng.uniform(0.3, 0.8), 0, 1)
    paint = np.array((40, 190, 230) if rng.random() < 0.3 else (235, 235, 235), np.float32) * rng.uniform(0.75, 1.05)
    colour = 0.8 * paint + 0.2 * img.astype(np.float32)  # paint keeps some of the road's grain
    return _blend(img, colour, alpha * rng.uniform(0.7, 1.0)), True


def slab_joint(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, bool]:
    """A concrete slab joint or sealed joint: a long straight dark line across the whole crop; opaque."""
    h, w = img.shape[:2]
    where = (rng.uniform(0, np.pi), rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h)
    width = rng.uniform(1.0, 7.0)
    out = _darken(img, _line_mask(h, w, rng, width, where=where), rng.uniform(0.15, 0.5))
    if rng.random() < 0.5:  # a sawn joint often has a lighter chamfer along one side
        side = rng.choice([-1.0, 1.0]) * (width / 2 + 1.5)
        chamfer = _line_mask(h, w, rng, rng.uniform(1.0, 3.0), offset=side, where=where)
        out = _blend(out, np.full(3, 255, np.float32), chamfer * rng.uniform(0.15, 0.4))
    return out, True


def road_stud(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, bool]:
    """One to four small bright reflective studs (cat's eyes) in a row, with a dark rim; opaque."""
    h, w = img.shape[:2]
    out = img.copy()
    n = int(rng.integers(1, 5))
    side = int(rng.integers(6, max(8, min(h, w) // 6)))
    x, y = rng.uniform(0.1, 0.8) * w, rng.uniform(0.1, 0.8) * h
    dx, dy = rng.normal(0, 1, 2)
    step = side * rng.uniform(3, 8) / max(1e-6, float(np.hypot(dx, dy)))
    colour = [(235, 235, 235), (40, 200, 240), (40, 40, 220)][int(rng.integers(3))]
    for _ in range(n):
        p0 = (int(x), int(y))
        p1 = (int(x + side), int(y + side * rng.uniform(0.5, 1.0)))
        cv2.rectangle(out, (p0[0] - 2, p0[1] - 2), (p1[0] + 2, p1[1] + 2), (30, 30, 30), -1)
        cv2.rectangle(out, p0, p1, colour, -1)
        x, y = x + dx * step, y + dy * step
    return out, True


def oil_stain(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, bool]:
    """A dark irregular stain a fraction of the crop across; opaque enough to hide what is under it."""
    h, w = img.shape[:2]
    alpha = _blob_mask(h, w, rng, rng.uniform(0.15, 0.6) * min(h, w))
    return _darken(img, alpha, rng.uniform(0.2, 0.6)), True


def shadow(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, bool]:
    """A cast shadow: a half-plane (pole, vehicle, bridge) with a straight, slightly soft edge."""
    h, w = img.shape[:2]
    theta = rng.uniform(0, 2 * np.pi)
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    if rng.random() < 0.5:  # a pole's shadow is a band, not a half-plane
        width = rng.uniform(0.05, 0.3) * min(h, w)
        d = width / 2 - np.abs(d)
    alpha = np.clip(d / rng.uniform(0.5, 4.0) + 0.5, 0, 1)
    return _darken(img, alpha, rng.uniform(0.35, 0.75)), False


def gradient(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, bool]:
    """A smooth brightness ramp across the crop (vignetting, headlights, low sun)."""
    h, w = img.shape[:2]
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = ((xx / max(w - 1, 1) - 0.5) * np.cos(theta) + (yy / max(h - 1, 1) - 0.5) * np.sin(theta))
    lo, hi = sorted(rng.uniform(0.5, 1.5, 2))
    f = lo + (hi - lo) * (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    return np.clip(img.astype(np.float32) * f[..., None], 0, 255).astype(np.uint8), False


def wet_patch(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, bool]:
    """A wet patch: darker, less contrast, a soft irregular outline (cracks stay visible under it)."""
    h, w = img.shape[:2]
    alpha = _blob_mask(h, w, rng, rng.uniform(0.3, 1.2) * max(h, w))
    f = img.astype(np.float32)
    wet = (f - f.mean()) * rng.uniform(0.6, 0.9) + f.mean() * rng.uniform(0.45, 0.75)
    a = alpha[..., None]
    return np.clip(f * (1 - a) + wet * a, 0, 255).astype(np.uint8), False


def repair_patch(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, bool]:
    """A patched area: a four-sided region of lighter or darker, differently grained surface with a
    sharp seam (CrackForest test 052, the release's worst image, is a patched, weathered surface)."""
    h, w = img.shape[:2]
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    half = rng.uniform(0.2, 0.7, 2) * np.array([w, h])
    angle = rng.uniform(-0.3, 0.3)  # patches are cut roughly along the road
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float32) * half
    corners += rng.normal(0, 0.08, (4, 2)) * half  # hand-cut, not a perfect rectangle
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    poly = (corners @ rot.T + [cx, cy]).astype(np.int32)
    alpha = np.zeros((h, w), np.uint8)
    cv2.fillPoly(alpha, [poly], 255, lineType=cv2.LINE_AA)
    f = img.astype(np.float32)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), rng.uniform(0.5, 2.0))
    level = f.mean() * (rng.uniform(0.55, 0.85) if rng.random() < 0.6 else rng.uniform(1.15, 1.45))
    patch = (f - f.mean()) * rng.uniform(0.3, 1.0) + level + grain[..., None] * rng.uniform(4, 15)
    return _blend(img, patch, alpha.astype(np.float32) / 255), True


def tar_spots(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, bool]:
    """Weathered surface: scattered dark, sharp-edged, irregular spots (bitumen, lost aggregate)."""
    h, w = img.shape[:2]
    small = (max(2, h // int(rng.integers(6, 16))), max(2, w // int(rng.integers(6, 16))))
    noise = cv2.resize(rng.random(small).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    region = _blob_mask(h, w, rng, rng.uniform(0.5, 1.5) * max(h, w))  # where the surface is worn
    spots = np.clip((noise - rng.uniform(0.72, 0.85)) * 20, 0, 1) * region
    return _darken(img, spots, rng.uniform(0.2, 0.55)), True


_DRAW = {"lane_marking": lane_marking, "slab_joint": slab_joint, "road_stud": road_stud, "oil_stain": oil_stain,
         "shadow": shadow, "gradient": gradient, "wet_patch": wet_patch, "repair_patch": repair_patch,
         "tar_spots": tar_spots}


def draw_distractor(kind: str, rng: np.random.Generator, img: np.ndarray, crack: np.ndarray | None = None) -> np.ndarray:
    """``img`` with one distractor of ``kind`` drawn in; pixels of ``crack`` (a bool mask) keep their look
    under opaque distractors, so the unchanged label stays true to the picture."""
    try:
        draw = _DRAW[kind]
    except KeyError:
        raise ValueError(f"unknown distractor {kind!r}; known: {', '.join(DISTRACTORS)}") from None
    out, opaque = draw(rng, img)
    if opaque and crack is not None and crack.any():
        keep = cv2.dilate(crack.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        out[keep] = img[keep]
    return out


def distractors(rng: np.random.Generator, img: np.ndarray, target: np.ndarray, prob: float,
                kinds: tuple[str, ...] = DISTRACTORS, most: int = 2) -> np.ndarray:
    """With probability ``prob``, draw 1..``most`` distractors into ``img``; the label is not touched."""
    if prob <= 0 or rng.random() >= prob:
        return img
    for _ in range(int(rng.integers(1, most + 1))):
        img = draw_distractor(kinds[int(rng.integers(len(kinds)))], rng, img, target)
    return img


def synthetic_road(rng: np.random.Generator, h: int, w: int, n_distractors: int = 2,
                   kinds: tuple[str, ...] = DISTRACTORS) -> np.ndarray:
    """A crack-free asphalt-like texture (grey, aggregate grain, fine speckle) with ``n_distractors``
    drawn from ``kinds``.  For the false-positive figure: every pixel flagged on it is a false alarm.
    """
    base = rng.uniform(80, 160)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), rng.uniform(0.6, 1.5))
    coarse = cv2.resize(rng.normal(0, 1, (max(2, h // 24), max(2, w // 24))).astype(np.float32), (w, h),
                        interpolation=cv2.INTER_CUBIC)
    grey = base + grain * rng.uniform(8, 22) + coarse * rng.uniform(3, 10)
    speck = rng.random((h, w)) < rng.uniform(0.005, 0.03)
    grey[speck] += rng.choice([-1.0, 1.0], int(speck.sum())) * rng.uniform(20, 50)
    tint = np.array([1.0, rng.uniform(0.97, 1.03), rng.uniform(0.95, 1.05)], np.float32)
    img = np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8)
    for _ in range(n_distractors):
        img = draw_distractor(kinds[int(rng.integers(len(kinds)))], rng, img)
    return img
