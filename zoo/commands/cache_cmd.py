"""``zoo cache``: run the teachers once into a feature cache, check it against the live teachers."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from zoo.commands.options import device_option, recipe_options
from zoo.errors import ConfigError


@click.group("cache")
def cache_group() -> None:
    """Teacher feature cache: build once, reuse for every student.

    \b
    Examples:
      zoo cache build --recipe smoke --out caches/smoke --views 4
      zoo distill --backbone resnet-18,vit-t16-cpe --recipe smoke --teacher-cache caches/smoke
      zoo cache verify caches/smoke --samples 16
    """


@cache_group.command("build")
@recipe_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="The cache folder.")
@click.option("--views", type=click.IntRange(min=1), default=None, help="Augmented views per image (default: recipe augment.views).")
@click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), default="fp16", show_default=True,
              help="Stored precision of the teacher outputs.")
@click.option("--shard-size", type=click.IntRange(min=1), default=None, help="Entries (image views) per shard.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per teacher forward.")
@device_option()
@click.option("--offline", is_flag=True, help="Never contact a model hub for teacher weights.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def build_command(recipe: str, overrides: tuple[str, ...], teacher_specs: tuple[str, ...], out_dir: str,
                  views: int | None, dtype: str, shard_size: int | None, batch_size: int | None, device: str,
                  offline: bool, no_progress: bool) -> None:
    """Run the recipe's teachers once over its images and store K views per image.

    Interrupted, or the disk filled up? Run the same command again: verified shards
    are kept. Run again on a finished cache, it restores a changed index.json and
    adds what an older zoo did not store (index checksum, PHI-S statistics)
    without running the teachers.

    \b
    Examples:
      zoo cache build --recipe smoke --out runs/smoke-cache
      zoo cache build --recipe search-proxy --views 4 --out runs/proxy-cache
      zoo cache build --recipe table7 --set data.path=/data/in21k --dtype bf16 --out /data/cache
    """
    from zoo.cache import DEFAULT_BUILD_BATCH, DEFAULT_SHARD_SIZE, build_cache, human
    from zoo.recipe import load_recipe
    from zoo.ui import console, err_console

    overrides = list(overrides)
    if teacher_specs:
        overrides.append("teachers=[" + ", ".join(f'"{s}"' for s in teacher_specs) + "]")
    loaded = load_recipe(recipe, overrides)
    if loaded.data.source in ("folder", "list") and not loaded.data.path:
        raise ConfigError(f"recipe '{loaded.name}' needs its images: --set data.path=/path/to/images")

    def estimate(rows: int, size: int) -> None:
        err_console.print(f"cache: {rows} entries ({views or loaded.augment.views} views per image), "
                          f"estimated size {human(size)} ({dtype})")

    manifest = build_cache(loaded, out_dir, views=views, device=device, dtype=dtype,
                           shard_size=shard_size or DEFAULT_SHARD_SIZE, batch_size=batch_size or DEFAULT_BUILD_BATCH,
                           progress=not no_progress, offline=offline or None, on_estimate=estimate)
    table = Table(title=f"zoo cache build: {out_dir}", title_justify="left")
    for column in ("teacher", "spec", "resolution", "summary", "features", "random"):
        table.add_column(column)
    for t in manifest["fingerprint"]["teachers"]:
        grid = "x".join(str(r // t["patch_size"]) for r in t["resolution"])
        table.add_row(t["name"], t["spec"], "x".join(map(str, t["resolution"])), str(t["summary_dim"]),
                      f"{t['feature_dim']}@{grid}", "yes" if t["random"] else "no")
    console.print(table)
    console.print(f"{manifest['rows']} entries in {len(manifest['shards'])} shard(s), {manifest['dtype']}, "
                  f"shared crop {manifest['fingerprint']['shared_resolution']}")
    stats = manifest.get("standardize") or {}
    console.print(f"PHI-S statistics: {stats['file']}" if stats.get("file") else
                  f"PHI-S statistics: not stored ({stats.get('skipped', 'none')})")


@cache_group.command("verify")
@click.argument("cache_dir", type=click.Path(file_okay=False))
@click.option("--samples", type=int, default=8, show_default=True, help="Entries recomputed with the live teachers.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which entries are sampled.")
@device_option()
@click.option("--offline", is_flag=True, help="Never contact a model hub for teacher weights.")
def verify_command(cache_dir: str, samples: int, seed: int, device: str, offline: bool) -> None:
    """Check every shard and recompute a sample of entries with the live teachers.

    Exits 1 when a shard is corrupt or a teacher's cosine similarity is under 0.999;
    exits 2 (one line) when index.json was changed after the build.

    \b
    Examples:
      zoo cache verify runs/smoke-cache
      zoo cache verify runs/proxy-cache --samples 32 --device cuda
    """
    from zoo.cache import TARGET_COSINE, verify_cache
    from zoo.ui import console, err_console

    if samples < 1:
        raise ConfigError("--samples must be at least 1")
    report = verify_cache(cache_dir, samples=samples, device=device, seed=seed, offline=offline or None)
    table = Table(title=f"zoo cache verify: {cache_dir} ({len(report.samples)} entries)", title_justify="left")
    for column, justify in (("teacher", "left"), ("cosine mean", "right"), ("cosine min", "right"),
                            ("max abs error", "right"), ("ok", "left")):
        table.add_column(column, justify=justify)
    for t in report.teachers:
        table.add_row(t.name, f"{t.cosine_mean:.6f}", f"{t.cosine_min:.6f}", f"{t.max_abs_error:.3g}",
                      "[green]yes[/]" if t.ok else f"[red]no (< {TARGET_COSINE})[/]")
    console.print(table)
    for problem in report.problems:
        err_console.print(f"[bold red]corrupt[/] {problem}", soft_wrap=True)
    if not report.ok:
        err_console.print(f"[bold red]cache {cache_dir} failed verification[/]")
        sys.exit(1)
    console.print(f"cache {cache_dir}: all shards intact, teachers agree (cosine >= {TARGET_COSINE})")
