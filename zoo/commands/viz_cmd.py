"""``zoo viz``: PCA pictures of spatial features (AM-RADIO Figure 1 / Appendix B)."""

from __future__ import annotations

from pathlib import Path

import click

from zoo.errors import ZooError
from zoo.evaluate import PCA_MODES, PCA_PERCENTILES, VIZ_CELL, VIZ_MAX_IMAGES
from zoo.ui import console


@click.command("viz")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--images", "images_dir", default=None, type=click.Path(path_type=Path),
              help="A folder of images (default: the bundled sample images).")
@click.option("--out", "out_path", default=None, type=click.Path(path_type=Path),
              help="Output PNG (default: RUN_DIR/pca.png).")
@click.option("--max-images", default=VIZ_MAX_IMAGES, show_default=True, type=click.IntRange(min=1),
              help="Rows: the first N images (sorted by path).")
@click.option("--resolutions", default=None, metavar="N[,N...]",
              help="Input sizes, e.g. 224,448,896 (columns repeat per size; default: the run's resolution).")
@click.option("--pca", "mode", default="joint", show_default=True, type=click.Choice(PCA_MODES),
              help="One PCA over all images of a column, or one per image.")
@click.option("--percentiles", default=f"{PCA_PERCENTILES[0]:g},{PCA_PERCENTILES[1]:g}", show_default=True,
              metavar="LO,HI", help="Robust colour scaling: these percentiles map to 0 and 1.")
@click.option("--with-teachers", is_flag=True, help="Add the teachers' own features (rebuilt from the record).")
@click.option("--cell", default=VIZ_CELL, show_default=True, type=click.IntRange(min=16), help="Pixels per cell.")
@click.option("--no-labels", is_flag=True, help="No column titles above the grid.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def viz_command(run_dir: Path, images_dir: Path | None, out_path: Path | None, max_images: int,
                resolutions: str | None, mode: str, percentiles: str, with_teachers: bool, cell: int,
                no_labels: bool, device: str) -> None:
    """PCA of the backbone's and each head's spatial features as RGB, one row per image.

    \b
    Example:
      zoo viz runs/resnet-18-smoke-... --resolutions 64,128,256 --out pca.png
    """
    from zoo.atomic import atomic_write_bytes
    from zoo.backbone import as_hw
    from zoo.data import bundled_images, folder_images
    from zoo.evaluate import open_run, parse_resolutions, render_viz, resolve_device

    try:
        low, high = (float(v) for v in percentiles.split(","))
    except ValueError:
        raise ZooError(f"--percentiles must be LO,HI (e.g. 1,99), got '{percentiles}'") from None
    if not 0 <= low < high <= 100:
        raise ZooError(f"--percentiles must satisfy 0 <= LO < HI <= 100, got {percentiles}")
    if images_dir is not None:
        if not images_dir.is_dir():
            raise ZooError(f"image folder not found: {images_dir}")
        images = folder_images(images_dir)
        if not images:
            raise ZooError(f"no images in {images_dir}")
    else:
        images = bundled_images()
        if not images:
            raise ZooError("no bundled sample images found; give --images FOLDER")
    images = images[:max_images]
    dev = resolve_device(device)
    run = open_run(run_dir, dev, build_teachers=with_teachers)
    sizes = parse_resolutions(resolutions, as_hw(run.record["resolution"]))
    teachers = run.teachers if with_teachers else []
    png, titles = render_viz(images, run.backbone, run.heads, teachers, sizes, dev, mode, (low, high), cell,
                             not no_labels)
    out_path = out_path or run_dir / "pca.png"
    atomic_write_bytes(out_path, png)
    console.print(f"wrote {out_path}: {len(images)} rows × {len(titles)} columns ({', '.join(titles)})",
                  highlight=False)
