"""``zoo viz``: PCA pictures of spatial features (AM-RADIO Figure 1 / Appendix B)."""

from __future__ import annotations

from pathlib import Path

import click

from zoo.commands.options import RESOLUTIONS, device_option
from zoo.errors import ZooError
from zoo.ui import console
from zoo.viz import PCA_MODES, PCA_PERCENTILES, VIZ_CELL, VIZ_FILE, VIZ_MAX_IMAGES


def _percentiles(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ZooError(f"--percentiles must be LO,HI (e.g. 1,99), got '{text}'") from None
    if not 0 <= low < high <= 100:
        raise ZooError(f"--percentiles must satisfy 0 <= LO < HI <= 100, got {text}")
    return low, high


def _images(images_dir: Path | None, max_images: int) -> list[Path]:
    from zoo.data import bundled_images, folder_images

    if images_dir is None:
        images = bundled_images()
        if not images:
            raise ZooError("no bundled sample images found; give --images FOLDER")
    else:
        if not images_dir.is_dir():
            raise ZooError(f"image folder not found: {images_dir}")
        images = folder_images(images_dir)
        if not images:
            raise ZooError(f"no images in {images_dir}")
    return images[:max_images]


@click.command("viz")
@click.argument("run")
@click.option("--images", "images_dir", default=None, type=click.Path(path_type=Path),
              help="A folder of images (default: the bundled sample images).")
@click.option("--out", "out_path", default=None, type=click.Path(path_type=Path),
              help=f"Output PNG (default: RUN/{VIZ_FILE}).")
@click.option("--max-images", default=VIZ_MAX_IMAGES, show_default=True, type=click.IntRange(min=1),
              help="Rows: the first N images (sorted by path).")
@click.option("--resolutions", default=None, type=RESOLUTIONS, metavar="N[,N...]",
              help="Input sizes, e.g. 224,448,896 or 224x320 (columns repeat per size; default: the run's).")
@click.option("--pca", "mode", default="joint", show_default=True, type=click.Choice(PCA_MODES),
              help="One PCA over all images of a column, or one per image.")
@click.option("--percentiles", default=f"{PCA_PERCENTILES[0]:g},{PCA_PERCENTILES[1]:g}", show_default=True,
              metavar="LO,HI", help="Robust colour scaling: these percentiles map to 0 and 1.")
@click.option("--with-teachers", is_flag=True, help="Add the teachers' own features (rebuilt from the record).")
@click.option("--cell", default=VIZ_CELL, show_default=True, type=click.IntRange(min=16), help="Pixels per cell.")
@click.option("--no-labels", is_flag=True, help="No column titles above the grid.")
@device_option()
def viz_command(run: str, images_dir: Path | None, out_path: Path | None, max_images: int,
                resolutions: list[tuple[int, int]] | None, mode: str, percentiles: str, with_teachers: bool,
                cell: int, no_labels: bool, device: str) -> None:
    """PCA of the backbone's and each head's spatial features as RGB, one row per image.

    RUN is a run folder or a run id under runs/.

    \b
    Example:
      zoo viz runs/resnet-18-smoke-... --resolutions 64,128,256 --out pca.png
    """
    from zoo.atomic import atomic_write_bytes
    from zoo.loading import load_run
    from zoo.progress import progress_bar
    from zoo.runs import open_run
    from zoo.viz import render_viz

    low_high = _percentiles(percentiles)
    images = _images(images_dir, max_images)
    opened = open_run(run)  # a bad folder or record fails before loading the model
    loaded = load_run(opened.root, device, build_teachers=with_teachers)
    sizes = resolutions or [loaded.resolution]
    for hw in sizes:
        loaded.backbone.check_resolution(*hw)
    teachers = loaded.teachers if with_teachers else []
    with progress_bar(transient=True) as bar:
        task = bar.add_task(f"PCA {loaded.record.backbone}", total=len(sizes), info="")
        png, titles = render_viz(images, loaded, teachers, sizes, mode, low_high, cell, not no_labels,
                                 lambda n: bar.update(task, advance=n))
    out_path = out_path or opened.root / VIZ_FILE
    atomic_write_bytes(out_path, png)
    console.print(f"wrote {out_path}: {len(images)} rows × {len(titles)} columns ({', '.join(titles)})",
                  highlight=False)
