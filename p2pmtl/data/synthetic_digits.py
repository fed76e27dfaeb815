"""Synthetic printed digits, generated offline.

In the spirit of the "Synthetic Digits" set of Ganin & Lempitsky (2015), "Unsupervised
Domain Adaptation by Backpropagation" (ICML): digit glyphs 0-9 drawn in many fonts with
random colour, size, rotation, position and stroke width on random backgrounds. Here each
(font, stroke width, digit) glyph of the TrueType fonts that matplotlib ships is drawn once
with PIL (``ImageDraw.text`` with ``stroke_width``); every image then places its glyph with a
random scale/rotation/offset (one batched bilinear warp), over a random colour gradient with
smooth noise texture and sometimes line/arc clutter and neighbour digits, is converted to
grayscale and area-resized from 32x32 to 28x28 so it can stand in for MNIST-shaped inputs.

Every random choice comes from ``numpy.random.Generator(seed)``, so a call is
deterministic for ``(n, seed)`` (given the same fonts and Pillow version, which are part
of the cache fingerprint).
"""
from __future__ import annotations

import os
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Union

import numpy as np
import torch

from .arrays import ArrayDataset

#: Bump when the generator's output changes, so cached files are not reused.
GENERATOR_VERSION = 1
RENDER_SIZE = 32  # glyphs are drawn on a RENDER_SIZE^2 canvas ...
OUT_SIZE = 28  # ... then area-downsampled to OUT_SIZE^2
_CHUNK = 2048  # images composed per vectorised block (bounds memory)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 grayscale
# Fonts that map the digit code points to symbols or to nothing (the glyph check below
# rejects them too; the list only saves rendering them).
_SYMBOL_FONT_PREFIXES = ("cmex", "cmsy", "STIXSiz", "STIXNonUni", "LastResort")

CacheDir = Union[str, Path, None, bool]


def default_cache_dir() -> Path:
    """Cache folder: ``$P2PMTL_CACHE`` if set, else ``~/.cache/p2pmtl``."""
    env = os.environ.get("P2PMTL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "p2pmtl"


# --------------------------------------------------------------------------- fonts


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=None)
def _font(path: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


def _glyph_signatures(path: Path) -> np.ndarray:
    """Each digit rendered, cropped to its ink, resized to 16x16 and normalised; ``[10, 256]``."""
    from PIL import Image, ImageDraw

    font = _font(str(path), 48)
    sigs = np.zeros((10, 256), dtype=np.float64)
    for d in range(10):
        im = Image.new("L", (96, 96), 0)
        ImageDraw.Draw(im).text((48, 48), str(d), font=font, fill=255, anchor="mm")
        box = im.getbbox()
        if box is None:
            continue
        g = np.asarray(im.crop(box).resize((16, 16), Image.BILINEAR), dtype=np.float64).ravel()
        g -= g.mean()
        norm = np.linalg.norm(g)
        if norm > 0:
            sigs[d] = g / norm
    return sigs


@lru_cache(maxsize=1)
def digit_fonts() -> tuple[Path, ...]:
    """The matplotlib TrueType fonts whose digits render as recognisable, distinct glyphs.

    A font is kept when all ten digits leave ink, the ten glyphs differ, and at least
    six of them are most similar to the same digit of DejaVu Sans (this rejects symbol
    fonts such as cmsy10 that map the digit code points to other shapes).
    """
    font_dir = _font_dir()
    candidates = sorted(font_dir.glob("*.ttf"))
    ref_path = font_dir / "DejaVuSans.ttf"
    ref = _glyph_signatures(ref_path) if ref_path.exists() else None
    keep: list[Path] = []
    for path in candidates:
        if path.name.startswith(_SYMBOL_FONT_PREFIXES):
            continue
        try:
            sigs = _glyph_signatures(path)
        except OSError:
            continue
        if not np.all(np.abs(sigs).sum(axis=1) > 0):
            continue  # some digit renders empty
        if len({s.round(6).tobytes() for s in sigs}) < 10:
            continue  # placeholder boxes: all digits look the same
        if ref is not None and (np.argmax(sigs @ ref.T, axis=1) == np.arange(10)).sum() < 6:
            continue  # the code points hold other symbols
        keep.append(path)
    if not keep:
        raise RuntimeError(f"no TrueType font with digit glyphs found under {font_dir}")
    return tuple(keep)


def _fingerprint() -> str:
    import PIL

    names = ",".join(p.name for p in digit_fonts())
    return f"v{GENERATOR_VERSION};pillow={PIL.__version__};fonts={names}"


# --------------------------------------------------------------------------- geometry


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` linear interpolation from ``n_in`` grid nodes spanning the output."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` box-filter (area) downsampling weights; rows sum to one."""
    scale = n_in / n_out
    m = np.zeros((n_out, n_in), dtype=np.float32)
    for i in range(n_out):
        a, b = i * scale, (i + 1) * scale
        for j in range(int(np.floor(a)), int(np.ceil(b))):
            m[i, j] = max(0.0, min(b, j + 1) - max(a, j))
    return m / m.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- rendering

_BANK_SIZE = 32  # font size (px) of the pre-rendered glyph bank
_BANK_CANVAS = 64  # bank glyphs are centred on a _BANK_CANVAS^2 canvas
_STROKES = (0, 1, 2)  # stroke widths (px at bank size); bold faces get at most 1
_STROKE_P = (0.5, 0.3, 0.2)


@lru_cache(maxsize=2)
def _glyph_bank(fonts: tuple[Path, ...]) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Every (font, stroke, digit) glyph drawn once with PIL.

    Returns masks ``[F*len(_STROKES)*10, 1, B, B]`` in [0, 1], the offset of each glyph's ink
    centre from the canvas centre ``[K, 2]`` (x, y; px) and each glyph's ink half-width ``[K]``.
    """
    from PIL import Image, ImageDraw

    b = _BANK_CANVAS
    masks, centres, half_widths = [], [], []
    for path in fonts:
        font = _font(str(path), _BANK_SIZE)
        for sw in _STROKES:
            for d in range(10):
                l, t, r, bo = font.getbbox(str(d), stroke_width=sw, anchor="ls")
                im = Image.new("L", (b, b), 0)
                ImageDraw.Draw(im).text(
                    (b / 2 - (l + r) / 2, b / 2 - (t + bo) / 2), str(d), font=font, fill=255,
                    anchor="ls", stroke_width=sw, stroke_fill=255,
                )
                box = im.getbbox() or (b // 2, b // 2, b // 2, b // 2)
                masks.append(np.asarray(im, dtype=np.float32) / 255.0)
                centres.append(((box[0] + box[2]) / 2 - b / 2, (box[1] + box[3]) / 2 - b / 2))
                half_widths.append((box[2] - box[0]) / 2)
    bank = torch.from_numpy(np.stack(masks)).unsqueeze(1)
    return bank, np.asarray(centres, dtype=np.float64), np.asarray(half_widths, dtype=np.float64)


def _backgrounds(rng: np.random.Generator, n: int, s: int) -> np.ndarray:
    """Random colour gradients plus (often) smooth two-octave noise texture; ``[n, 3, s, s]``."""
    c0 = rng.random((n, 3), dtype=np.float32)
    c1 = rng.random((n, 3), dtype=np.float32)
    span = rng.uniform(0.0, 0.7, (n, 1)).astype(np.float32)
    theta = rng.uniform(0.0, 2 * np.pi, n)
    coord = (np.arange(s, dtype=np.float32) + 0.5) / s - 0.5
    cos, sin = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    norm = np.abs(cos) + np.abs(sin)
    t = (cos / norm)[:, None, None] * coord[None, None, :] + (sin / norm)[:, None, None] * coord[None, :, None]
    t += 0.5  # [n, s(y), s(x)] in [0, 1]
    bg = c0[:, :, None, None] + ((c1 - c0) * span)[:, :, None, None] * t[:, None, :, :]
    textured = rng.random(n) < 0.6
    amp = (rng.uniform(0.05, 0.25, n) * textured).astype(np.float32)
    for grid, weight in ((4, 1.0), (9, 0.5)):
        up = _bilinear_matrix(grid, s)
        coarse = rng.standard_normal((n, 3, grid, grid), dtype=np.float32)
        bg += (weight * amp)[:, None, None, None] * (up @ coarse @ up.T)
    return np.clip(bg, 0.0, 1.0, out=bg)


def _place(bank: torch.Tensor, idx: np.ndarray, theta: np.ndarray, s: int) -> np.ndarray:
    """Warp bank glyphs ``idx`` by affine maps ``theta`` ``[m, 2, 3]`` onto ``s x s``; ``[m, s, s]``."""
    if len(idx) == 0:
        return np.zeros((0, s, s), dtype=np.float32)
    th = torch.from_numpy(theta.astype(np.float32))
    grid = torch.nn.functional.affine_grid(th, [len(idx), 1, s, s], align_corners=False)
    src = bank[torch.from_numpy(idx)]
    out = torch.nn.functional.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, 0].numpy()


def _digit_masks(
    rng: np.random.Generator, labels: np.ndarray, fonts: tuple[Path, ...], s: int
) -> np.ndarray:
    """Glyph coverage masks ``[n, s, s]`` in [0, 1]: the label's digit in a random font, size,
    stroke, rotation and offset, sometimes flanked by partly visible neighbour digits in the
    same style (as in house-number crops)."""
    bank, centres, half_widths = _glyph_bank(fonts)
    n, b = len(labels), _BANK_CANVAS
    font_idx = rng.integers(len(fonts), size=n)
    stroke_idx = rng.choice(len(_STROKES), size=n, p=_STROKE_P)
    bold = np.array([("Bol" in p.name) or p.name.startswith("cmb") for p in fonts])
    stroke_idx = np.where(bold[font_idx], np.minimum(stroke_idx, 1), stroke_idx)  # keep counters open
    scale = rng.uniform(20.0, 30.0, size=n) / _BANK_SIZE  # output px per bank px
    angle = np.deg2rad(rng.uniform(-15.0, 15.0, size=n))
    shift = rng.uniform(-2.5, 2.5, size=(n, 2))
    has_neighbour = rng.random((n, 2)) < 0.15  # left, right
    neighbour_digit = rng.integers(10, size=(n, 2))
    gap = rng.uniform(1.0, 4.0, size=(n, 2))  # bank px between inks

    style = (font_idx * len(_STROKES) + stroke_idx) * 10
    main = style + labels
    # output pixel u -> bank pixel v (both centred):  v = R (u - shift) / scale + ink_centre - offset,
    # with offset 0 for the label digit and (+-dist, 0) for a neighbour
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # [n, 2, 2]
    lin = rot * (s / (b * scale))[:, None, None]  # normalised output -> normalised bank coords
    trans_base = -np.einsum("nij,nj->ni", rot, shift) * (2.0 / (b * scale))[:, None]

    def theta_for(k: np.ndarray, offset: np.ndarray, rows: np.ndarray) -> np.ndarray:
        t = trans_base[rows] + 2.0 * (offset + centres[k]) / b
        return np.concatenate([lin[rows], t[:, :, None]], axis=2)

    zeros = np.zeros((n, 2))
    masks = _place(bank, main, theta_for(main, zeros, np.arange(n)), s)
    for side, sign in ((0, -1.0), (1, 1.0)):
        rows = np.flatnonzero(has_neighbour[:, side])
        k = style[rows] + neighbour_digit[rows, side]
        dist = half_widths[main[rows]] + gap[rows, side] + half_widths[k]
        # neighbour ink centre sits dist bank-px beside the main ink centre, same height
        offset = np.stack([sign * dist, np.zeros_like(dist)], axis=1)
        k_theta = theta_for(k, -offset, rows)
        masks[rows] = np.maximum(masks[rows], _place(bank, k, k_theta, s))
    return masks


def _clutter_masks(rng: np.random.Generator, n: int, s: int) -> np.ndarray:
    """Random line/arc clutter on about 30% of images; ``[n, s, s]`` in [0, 1]."""
    from PIL import Image, ImageDraw

    has = rng.random(n) < 0.3
    counts = rng.integers(1, 4, size=n)
    pts = rng.uniform(-4.0, s + 4.0, size=(n, 3, 4))
    widths = rng.integers(1, 3, size=(n, 3))
    arcs = rng.random((n, 3)) < 0.3
    out = np.zeros((n, s, s), dtype=np.float32)
    for i in np.flatnonzero(has):
        im = Image.new("L", (s, s), 0)
        draw = ImageDraw.Draw(im)
        for k in range(int(counts[i])):
            x0, y0, x1, y1 = pts[i, k]
            if arcs[i, k]:
                box = (min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1)
                draw.ellipse(box, outline=255, width=int(widths[i, k]))
            else:
                draw.line((x0, y0, x1, y1), fill=255, width=int(widths[i, k]))
        out[i] = np.asarray(im, dtype=np.float32) / 255.0
    return out


def _colour_with_luma(rng: np.random.Generator, target: np.ndarray) -> np.ndarray:
    """Random RGB colours shifted so their luma is (about) ``target``; ``[n, 3]``."""
    c = rng.random((len(target), 3), dtype=np.float32)
    c += (target - c @ _LUMA)[:, None]
    return np.clip(c, 0.0, 1.0)


def _render_chunk(
    rng: np.random.Generator, labels: np.ndarray, fonts: tuple[Path, ...]
) -> np.ndarray:
    """Compose one block of images; returns uint8 ``[n, OUT_SIZE, OUT_SIZE]``."""
    n, s = len(labels), RENDER_SIZE
    bg = _backgrounds(rng, n, s)  # [n, 3, s, s]
    digit = _digit_masks(rng, labels, fonts, s)[:, None]
    clutter = _clutter_masks(rng, n, s)[:, None]
    q = s // 4
    bg_luma = bg[:, :, q:-q, q:-q].mean(axis=(2, 3)) @ _LUMA
    # foreground at least 0.3 luma away from the central background, lighter or darker
    contrast = rng.uniform(0.3, 1.0, n).astype(np.float32)
    lighter = np.where(bg_luma < 0.3, True, np.where(bg_luma > 0.7, False, rng.random(n) < 0.5))
    fg_luma = np.clip(np.where(lighter, bg_luma + contrast, bg_luma - contrast), 0.0, 1.0)
    fg = _colour_with_luma(rng, fg_luma.astype(np.float32))
    clutter_colour = rng.random((n, 3), dtype=np.float32)
    clutter *= rng.uniform(0.3, 0.9, n).astype(np.float32)[:, None, None, None]
    img = bg * (1.0 - clutter) + clutter_colour[:, :, None, None] * clutter
    img = img * (1.0 - digit) + fg[:, :, None, None] * digit
    gray = np.tensordot(_LUMA, img, axes=([0], [1]))  # [n, s, s]
    sigma = rng.uniform(0.0, 0.04, n).astype(np.float32)
    gray += sigma[:, None, None] * rng.standard_normal(gray.shape, dtype=np.float32)
    down = _area_matrix(s, OUT_SIZE)
    small = down @ gray @ down.T
    return np.rint(np.clip(small, 0.0, 1.0) * 255.0).astype(np.uint8)


def _generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``[n, 28, 28]`` and balanced, shuffled labels int64 ``[n]``."""
    rng = np.random.default_rng(seed)
    fonts = digit_fonts()
    labels = rng.permutation(np.arange(n, dtype=np.int64) % 10)
    images = np.empty((n, OUT_SIZE, OUT_SIZE), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        images[start:stop] = _render_chunk(rng, labels[start:stop], fonts)
    return images, labels


# --------------------------------------------------------------------------- cache + API


def _cache_path(directory: Path, n: int, seed: int) -> Path:
    return directory / f"synthetic_digits_v{GENERATOR_VERSION}_n{n}_seed{seed}.npz"


def _load_cached(path: Path, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["fingerprint"]) != _fingerprint():
                return None
            images, labels = f["images"], f["labels"]
    except (OSError, KeyError, ValueError):
        return None
    if images.shape != (n, OUT_SIZE, OUT_SIZE) or labels.shape != (n,):
        return None
    return images, labels


def _save_cached(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp.npz")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, images=images, labels=labels, fingerprint=np.array(_fingerprint()))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"could not write synthetic digits cache {path}: {exc}", stacklevel=3)


def make_synthetic_digits(n: int, seed: int, *, cache_dir: CacheDir = None) -> ArrayDataset:
    """``n`` synthetic digit images, x ``[n, 1, 28, 28]`` float32 in [0, 1], y balanced over 0..9.

    Deterministic for ``(n, seed)``. ``cache_dir``: a folder to keep/read the result as
    ``.npz``; ``None`` (or ``True``) uses :func:`default_cache_dir`; ``False`` disables caching.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    n, seed = int(n), int(seed)
    cached = None
    path = None
    if cache_dir is not False:
        directory = default_cache_dir() if cache_dir is None or cache_dir is True else Path(cache_dir)
        path = _cache_path(directory.expanduser(), n, seed)
        if path.exists():
            cached = _load_cached(path, n)
    if cached is None:
        images, labels = _generate(n, seed)
        if path is not None:
            _save_cached(path, images, labels)
    else:
        images, labels = cached
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0).unsqueeze(1)
    y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    return ArrayDataset(x=x, y=y, num_classes=10, name="synthetic_digits")
