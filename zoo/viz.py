"""PCA pictures of spatial features (AM-RADIO Figure 1, Appendix B).

The first three principal components of a feature map, as RGB, side by side
with the input: one row per image, columns ``input | backbone | head <t> ... |
teacher <t> ...``, repeated per resolution (how features hold up as the input
grows is what the paper's "mode switching" pictures show).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from zoo.errors import ZooError, unknown_name

PCA_MODES = ("joint", "per-image")
PCA_PERCENTILES = (1.0, 99.0)
VIZ_CELL = 128
VIZ_LABEL_HEIGHT = 14  # the strip of column names above the grid
VIZ_MAX_IMAGES = 4
VIZ_FILE = "pca.png"  # default output inside the run folder


def robust_unit(values: np.ndarray, percentiles: Sequence[float] = PCA_PERCENTILES) -> np.ndarray:
    """Per column, ``(x - p_lo) / (p_hi - p_lo)`` clipped to [0, 1] (outliers do not wash out colours)."""
    lo = np.percentile(values, percentiles[0], axis=0)
    hi = np.percentile(values, percentiles[1], axis=0)
    return np.clip((values - lo) / np.maximum(hi - lo, 1e-8), 0.0, 1.0)


def pca_rgb(features: Sequence[torch.Tensor] | torch.Tensor, mode: str = "joint",
            percentiles: Sequence[float] = PCA_PERCENTILES) -> list[np.ndarray]:
    """Spatial features ``[C, h, w]`` (per image) -> RGB ``[h, w, 3]`` in [0, 1] from 3 PCA components.

    ``joint`` fits one PCA (and one colour scaling) over all images, so colours
    are comparable across images; ``per-image`` fits each image alone.
    """
    from sklearn.decomposition import PCA

    if mode not in PCA_MODES:
        raise unknown_name("PCA mode", mode, PCA_MODES)
    maps = [f.detach().float().cpu() for f in features]
    flat = [m.reshape(m.shape[0], -1).T.numpy() for m in maps]  # [h*w, C]

    def project(rows: np.ndarray) -> np.ndarray:
        n = min(3, rows.shape[0], rows.shape[1])
        out = np.zeros((rows.shape[0], 3), dtype=np.float64)
        if n > 0 and rows.shape[0] > 1:
            out[:, :n] = PCA(n_components=n, svd_solver="full").fit_transform(rows)
        return robust_unit(out, percentiles)

    if mode == "joint":
        joint = project(np.concatenate(flat))
        sizes = np.cumsum([0] + [f.shape[0] for f in flat])
        colours = [joint[a:b] for a, b in zip(sizes[:-1], sizes[1:])]
    else:
        colours = [project(f) for f in flat]
    return [c.reshape(m.shape[1], m.shape[2], 3) for c, m in zip(colours, maps)]


@dataclass
class VizColumn:
    """One grid column: a title and, per image, an RGB array in [0, 1] (an input or a PCA picture)."""

    title: str
    cells: list[np.ndarray]


def grid_png(columns: Sequence[VizColumn], cell: int = VIZ_CELL, labels: bool = True) -> bytes:
    """A PNG of one row per image, one ``cell``-pixel square per column (features upsampled nearest)."""
    from PIL import Image, ImageDraw

    rows = len(columns[0].cells) if columns else 0
    top = VIZ_LABEL_HEIGHT if labels else 0
    canvas = Image.new("RGB", (cell * len(columns), top + cell * rows), "white")
    draw = ImageDraw.Draw(canvas)
    for c, column in enumerate(columns):
        if labels:
            draw.text((c * cell + 2, 1), column.title[: max(4, cell // 6)], fill="black")
        for r, array in enumerate(column.cells):
            picture = Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8), "RGB")
            picture = picture.resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(picture, (c * cell, top + r * cell))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def load_images(paths: Sequence[Path], size_hw: tuple[int, int]) -> torch.Tensor:
    """Images as [N, 3, h, w] in [0, 1]: the centre crop at ``size_hw``'s aspect, resized bilinearly."""
    from zoo.data import center_crop_box, load_crop

    pictures = []
    for path in paths:
        try:
            pictures.append(load_crop(Path(path), lambda w, h: center_crop_box(w, h, size_hw), size_hw))
        except OSError as err:
            raise ZooError(f"cannot read image {path}: {err}") from None
    return torch.stack(pictures)


def _tag(size_hw: tuple[int, int]) -> str:
    return f"@{size_hw[0]}" if size_hw[0] == size_hw[1] else f"@{size_hw[0]}x{size_hw[1]}"


@torch.no_grad()
def feature_columns(images: torch.Tensor, run: Any, teachers: Sequence[Any], size_hw: tuple[int, int],
                    mode: str = "joint", percentiles: Sequence[float] = PCA_PERCENTILES) -> list[VizColumn]:
    """Columns ``input | backbone | head <t> ... | teacher <t> ...`` for images [N, 3, H, W] in [0, 1].

    ``run`` is a :class:`zoo.loading.LoadedRun`; heads are drawn in their teacher's space.
    """
    out, predictions = run(images, size_hw)
    columns = [VizColumn(f"input {_tag(size_hw)}", [im.permute(1, 2, 0).cpu().numpy() for im in images]),
               VizColumn("backbone", pca_rgb(list(out.features), mode, percentiles))]
    for name, prediction in predictions.items():
        columns.append(VizColumn(f"head {name}", pca_rgb(list(prediction.features), mode, percentiles)))
    for teacher in teachers:
        columns.append(VizColumn(f"teacher {teacher.name}", pca_rgb(list(teacher(images)[1]), mode, percentiles)))
    return columns


def render_viz(image_paths: Sequence[Path], run: Any, teachers: Sequence[Any],
               resolutions: Sequence[tuple[int, int]], mode: str = "joint",
               percentiles: Sequence[float] = PCA_PERCENTILES, cell: int = VIZ_CELL, labels: bool = True,
               progress: Any = None) -> tuple[bytes, list[str]]:
    """The grid PNG over every resolution (its columns repeat per resolution) and the column titles.

    ``progress`` (optional) is called with 1 after each resolution.
    """
    if not image_paths:
        raise ZooError("no images to draw")
    for hw in resolutions:
        run.backbone.check_resolution(*hw)  # fail before any work
    columns: list[VizColumn] = []
    for hw in resolutions:
        columns.extend(feature_columns(load_images(image_paths, hw), run, teachers, hw, mode, percentiles))
        if progress is not None:
            progress(1)
    return grid_png(columns, cell, labels), [c.title for c in columns]
