"""Procedural scenes for the `shapes` dataset: vectorised numpy drawing, no pixel loops.

A scene is a textured background with 1..max_objects shapes of distinct classes painted on
top of each other (later objects occlude earlier ones). Every random draw comes from one
generator seeded by (seed, split, index), so a scene never depends on how many others are
generated and two runs are bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Alphabetical, so that ImageFolder's sorted class folders give the same indices.
CLASSES: tuple[str, ...] = ("circle", "cross", "ellipse", "square", "star", "triangle")

AREA_RANGE = (0.04, 0.15)  # unoccluded object area as a fraction of the image
MIN_VISIBLE = 0.4  # a later object may hide at most 60% of an earlier one
MAX_TRIES = 12  # placements tried per object before it is skipped
MIN_PIXELS = 16  # an object must cover at least this many pixels
MIN_COLOUR_DISTANCE = 70.0  # object base colour vs background mean (RGB L2)
_STAR_INNER = 0.42
_CROSS_HALF_WIDTH, _CROSS_HALF_LENGTH = 0.3, 0.95
_SQUARE_HALF = 0.8
_SQRT3_2 = math.sqrt(3.0) / 2.0


def _unit_area(name: str, aspect: float) -> float:
    """Area of the shape drawn with radius 1 (so radius = sqrt(target_area / unit_area))."""
    a, b = _STAR_INNER, 1.0 - _STAR_INNER
    w, length = _CROSS_HALF_WIDTH, _CROSS_HALF_LENGTH
    return {
        "circle": math.pi,
        "ellipse": math.pi * aspect,
        "square": (2 * _SQUARE_HALF) ** 2,
        "triangle": 3 * math.sqrt(3.0) / 4,  # equilateral, circumradius 1
        "star": math.pi * (a * a + a * b + b * b / 3),  # polar integral of the radius below
        "cross": 2 * (2 * w) * (2 * length) - (2 * w) ** 2,
    }[name]


def shape_mask(name: str, u: np.ndarray, v: np.ndarray, aspect: float) -> np.ndarray:
    """Inside test in the object's frame (u, v: [H, W] rotated coordinates / radius)."""
    if name == "circle":
        return u * u + v * v <= 1.0
    if name == "ellipse":
        return u * u + (v / aspect) ** 2 <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= _SQUARE_HALF
    if name == "triangle":  # three half-planes at inradius 0.5
        return (v <= 0.5) & (_SQRT3_2 * u - 0.5 * v <= 0.5) & (-_SQRT3_2 * u - 0.5 * v <= 0.5)
    if name == "star":  # 5 points: radius interpolates linearly in angle between tips
        t = np.mod(np.arctan2(v, u) * (5 / (2 * math.pi)), 1.0)
        tri = np.abs(1.0 - 2.0 * t)
        return np.sqrt(u * u + v * v) <= _STAR_INNER + (1 - _STAR_INNER) * tri
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        w, length = _CROSS_HALF_WIDTH, _CROSS_HALF_LENGTH
        return ((au <= w) & (av <= length)) | ((av <= w) & (au <= length))
    raise KeyError(name)


@dataclass
class Scene:
    image: np.ndarray  # [S, S, 3] uint8 RGB
    instances: np.ndarray  # [S, S] uint8, 0 background, k = k-th painted object
    categories: np.ndarray  # [N] int64 category ids (1-based index into CLASSES)
    visible_fraction: np.ndarray  # [N] float64 visible / unoccluded pixels
    label: int  # image-level class index: class of the largest visible object

    @property
    def semantic(self) -> np.ndarray:  # [S, S] uint8 category id per pixel, 0 background
        lut = np.concatenate([[0], self.categories]).astype(np.uint8)
        return lut[self.instances]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """[S, S] in [0, 1]: a (cells+1)^2 random lattice bilinearly upsampled."""
    lattice = rng.random((cells + 1, cells + 1)).astype(np.float32)
    t = (np.arange(size, dtype=np.float32) + 0.5) * (cells / size)
    i0 = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i0
    rows = lattice[i0] * (1 - f)[:, None] + lattice[i0 + 1] * f[:, None]  # [S, cells+1]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _mix(c1: np.ndarray, c2: np.ndarray, s: np.ndarray) -> np.ndarray:
    """[S, S, 3] float32 = c1 * (1 - s) + c2 * s."""
    s = s[..., None]
    return c1 * (1 - s) + c2 * s


def _second_colour(rng: np.random.Generator, c1: np.ndarray, lo: float, hi: float) -> np.ndarray:
    sign = np.where(rng.random(3) < 0.5, -1.0, 1.0)
    delta = sign * rng.uniform(0.5, 1.0, 3) * rng.uniform(lo, hi)
    return np.clip(c1 + delta, 0, 255).astype(np.float32)


def _background(rng, yy, xx, size) -> np.ndarray:
    b1 = rng.uniform(20, 235, 3).astype(np.float32)
    b2 = _second_colour(rng, b1, 60, 140)
    s = 0.6 * _smooth_noise(rng, size, int(rng.integers(2, 6)))
    kind = int(rng.integers(0, 3))
    if kind == 0:  # finer blobs
        pattern = _smooth_noise(rng, size, int(rng.integers(6, 12)))
    elif kind == 1:  # soft stripes
        beta, freq, phase = rng.uniform(0, math.pi), rng.uniform(2, 6), rng.uniform(0, 2 * math.pi)
        proj = (xx * math.cos(beta) + yy * math.sin(beta)) / size
        pattern = 0.5 + 0.5 * np.sin(2 * math.pi * freq * proj + phase)
    else:  # linear gradient
        beta = rng.uniform(0, 2 * math.pi)
        proj = ((xx - size / 2) * math.cos(beta) + (yy - size / 2) * math.sin(beta)) / size
        pattern = np.clip(proj + 0.5, 0, 1)
    s = s + 0.4 * pattern.astype(np.float32)
    s = (s - s.min()) / max(float(s.max() - s.min()), 1e-6)  # use the full contrast
    return _mix(b1, b2, s)


# textures="class": each class wears its own texture family (colours stay random), as real
# categories have typical surfaces; textures="random": any class, any texture (shape only)
CLASS_TEXTURE = {"circle": 5, "cross": 3, "ellipse": 1, "square": 4, "star": 0, "triangle": 2}


def _texture(rng, u: np.ndarray, v: np.ndarray, c1: np.ndarray, kind: int | None = None):
    """[S, S, 3] float32 texture in the object's frame:
    solid/stripes/gradient/checker/noise/rings (kind 0-5; drawn at random when None)."""
    c2 = _second_colour(rng, c1, 50, 150)
    drawn = int(rng.integers(0, 5))  # always drawn: the stream stays the same for textures=random
    kind = drawn if kind is None else kind
    if kind == 5:
        freq, phase = rng.uniform(1.5, 3.0), rng.uniform(0, 2 * math.pi)
        s = 0.5 + 0.5 * np.sin(2 * math.pi * freq * np.sqrt(u * u + v * v) + phase)
        return _mix(c1, c2, s.astype(np.float32))
    beta = rng.uniform(0, math.pi)
    proj = u * math.cos(beta) + v * math.sin(beta)
    if kind == 0:
        return np.broadcast_to(c1, (*u.shape, 3)).astype(np.float32)
    if kind == 1:
        freq, phase = rng.uniform(1.0, 2.5), rng.uniform(0, 2 * math.pi)
        s = 0.5 + 0.5 * np.sin(2 * math.pi * freq * proj + phase)
        if rng.random() < 0.5:
            s = (s > 0.5).astype(np.float32)
        return _mix(c1, c2, s)
    if kind == 2:
        return _mix(c1, c2, np.clip((proj + 1) / 2, 0, 1))
    if kind == 3:
        freq = rng.uniform(1.5, 3.0)
        s = (np.floor(u * freq) + np.floor(v * freq)) % 2
        return _mix(c1, c2, s.astype(np.float32))
    return _mix(c1, c2, 0.6 * rng.random(u.shape, dtype=np.float32))


def _object_colour(rng, background_mean: np.ndarray) -> np.ndarray:
    colour = rng.uniform(0, 255, 3)
    for _ in range(20):  # rejection sampling keeps objects distinguishable from the scene
        if np.linalg.norm(colour - background_mean) >= MIN_COLOUR_DISTANCE:
            break
        colour = rng.uniform(0, 255, 3)
    return colour.astype(np.float32)


def _frame(rng, yy, xx, size, name):
    """Sample one object's pose; return (u, v, aspect) normalised object coordinates."""
    aspect = float(rng.uniform(0.45, 0.65)) if name == "ellipse" else 1.0
    area = rng.uniform(*AREA_RANGE) * size * size
    radius = math.sqrt(area / _unit_area(name, aspect))
    cx, cy = rng.uniform(0.5 * radius, size - 0.5 * radius, 2)
    theta = rng.uniform(0, 2 * math.pi)
    cos, sin = math.cos(theta), math.sin(theta)
    dx, dy = xx - np.float32(cx), yy - np.float32(cy)
    u = (dx * np.float32(cos) + dy * np.float32(sin)) / np.float32(radius)
    v = (dy * np.float32(cos) - dx * np.float32(sin)) / np.float32(radius)
    return u, v, aspect


def scene_rng(seed: int, split_key: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(split_key), int(index)]))


def render_scene(
    rng: np.random.Generator,
    size: int,
    min_objects: int,
    max_objects: int,
    textures: str = "random",
) -> Scene:
    """Draw one scene. Vectorised per object; cost O(objects * tries * S^2)."""
    yy, xx = _grid(size)
    image = _background(rng, yy, xx, size)
    background_mean = image.reshape(-1, 3).mean(0)
    instances = np.zeros((size, size), np.uint8)
    full_area: list[int] = []
    categories: list[int] = []
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        k = len(categories) + 1
        for _attempt in range(MAX_TRIES):
            cat = int(rng.integers(0, len(CLASSES)))
            u, v, aspect = _frame(rng, yy, xx, size, CLASSES[cat])
            mask = shape_mask(CLASSES[cat], u, v, aspect)
            area = int(mask.sum())
            if area < MIN_PIXELS:
                continue
            trial = np.where(mask, np.uint8(k), instances)
            visible = np.bincount(trial.ravel(), minlength=k + 1)[1:k]
            if np.all(visible >= MIN_VISIBLE * np.asarray(full_area, dtype=np.float64)):
                instances = trial
                full_area.append(area)
                categories.append(cat + 1)
                kind = CLASS_TEXTURE[CLASSES[cat]] if textures == "class" else None
                texture = _texture(rng, u, v, _object_colour(rng, background_mean), kind)
                image = np.where(mask[..., None], texture, image)
                break
    if not categories:  # cannot happen with AREA_RANGE >> MIN_PIXELS; guard the invariant
        raise RuntimeError(f"no object could be placed in a {size}px scene")
    sigma = np.float32(rng.uniform(2.0, 7.0))
    image = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    visible = np.bincount(instances.ravel(), minlength=len(categories) + 1)[1:]
    cats = np.asarray(categories, dtype=np.int64)
    return Scene(
        image=image,
        instances=instances,
        categories=cats,
        visible_fraction=visible / np.asarray(full_area, dtype=np.float64),
        label=int(cats[int(np.argmax(visible))]) - 1,
    )
