"""Teacher feature cache: a sweep of N students with and without ``zoo cache``, in one run.

Every student trains under the same recipe against the same frozen teachers:
online, each student pays for the teachers' forwards; with the cache, the
teachers run once (``build_cache``) and every student reads their outputs.
The cache holds exactly the views online training shows (K views x images =
steps x batch), so the two sweeps train on the same crops and targets (to fp16).

The teacher is a realistic cost: a randomly initialised ``vit_small_patch14_dinov2``
saved to a temporary safetensors file (no download), plus tiny CLIP. Students
are small registry backbones at 64 px. Prints the wall-time ratio (cache build
included and excluded), the FD-loss difference and the break-even number of
students.

    python benchmarks/cache_speedup.py                # ~2-3 minutes on 2 CPU cores
    python benchmarks/cache_speedup.py --students convnext-atto,resnet-18 --steps 6
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

DEFAULT_STUDENTS = "convnext-atto,regnety-004,resnet-18,vit-t16-cpe"
TEACHER_MODEL = "vit_small_patch14_dinov2"


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    """Smooth random images (structure the teachers respond to)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((320, 240), Image.Resampling.BICUBIC).save(folder / f"{i:03d}.png")


def make_teacher_weights(folder: Path) -> Path:
    """A random DINOv2 ViT-S/14 in a local safetensors file: a real teacher's cost, no download."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(TEACHER_MODEL, pretrained=False, num_classes=0)
    path = folder / f"{TEACHER_MODEL}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def sweep(students: list[str], recipe, teachers, out: Path, cache: Path) -> dict[str, dict[str, Any]]:
    """Each student online and from the cache, interleaved (both see the same machine load)."""
    from zoo.distill import distill

    results: dict[str, dict[str, Any]] = {"online": {}, "cached": {}}
    for i, name in enumerate(students):
        modes = [("online", None), ("cached", cache)]
        for mode, source in modes if i % 2 == 0 else modes[::-1]:  # alternate who goes first (warm-up, load)
            start = time.perf_counter()
            record = distill(name, recipe, out_dir=out, run_name=f"{name}-{mode}", device="cpu", progress=False,
                             teachers=teachers, teacher_cache=source)
            results[mode][name] = {"wall_s": time.perf_counter() - start, "loop_s": record["wall_time_s"],
                                   "fd_loss": record["fd_loss"]}
            print(f"  {name:<16} {mode:<7} {results[mode][name]['wall_s']:6.1f} s "
                  f"(training loop {record['wall_time_s']:.1f} s)", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", default=DEFAULT_STUDENTS)
    parser.add_argument("--images", type=int, default=24, help="training images (2 more are held out)")
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--teacher-resolution", type=int, default=224)
    parser.add_argument("--resolution", type=int, default=64, help="student resolution")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from zoo.cache import build_cache
    from zoo.recipe import load_recipe
    from zoo.registry import parse_backbone_list
    from zoo.teachers import build_teachers

    students = parse_backbone_list(args.students)
    positions = args.images * args.views
    if positions % args.batch_size:
        raise SystemExit("images x views must be a multiple of the batch size (the cache then holds every view)")
    steps = positions // args.batch_size
    with tempfile.TemporaryDirectory(prefix="zoo-cache-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        make_images(tmp / "images", args.images + 2)
        weights = make_teacher_weights(tmp)
        specs = ["clip:tiny@64", f"dinov2:{TEACHER_MODEL}:{weights}@{args.teacher_resolution}"]
        recipe = load_recipe("smoke", [
            "teachers=[" + ", ".join(f'"{s}"' for s in specs) + "]", "data.source=folder",
            f"data.path={tmp / 'images'}", "data.workers=0", f"train.resolution={args.resolution}",
            f"train.batch_size={args.batch_size}", f"train.steps={steps}", "train.checkpoint_every=1000",
            "eval.images=2", "eval.every=0", "bench.enabled=false", f"augment.views={args.views}",
        ])
        teachers = build_teachers(recipe.teachers, "cpu", offline=True)
        print(f"{len(students)} students x {steps} steps x batch {args.batch_size} at {args.resolution} px; "
              f"teachers {', '.join(specs[:1] + [f'dinov2:{TEACHER_MODEL}@{args.teacher_resolution} (random)'])}; "
              f"{args.images} images x {args.views} views; {args.threads} threads", flush=True)

        start = time.perf_counter()
        build_cache(recipe, tmp / "cache", teachers=teachers, device="cpu", progress=False)
        build_s = time.perf_counter() - start
        print(f"cache build: {build_s:.1f} s", flush=True)
        results = sweep(students, recipe, teachers, tmp / "runs", tmp / "cache")

    n = len(students)
    online_s = sum(r["wall_s"] for r in results["online"].values())
    cached_s = sum(r["wall_s"] for r in results["cached"].values())
    per_online, per_cached = online_s / n, cached_s / n
    saving = per_online - per_cached
    # the smallest N with build + N * cached < N * online
    break_even = math.floor(build_s / saving) + 1 if saving > 0 else None
    fd = [(b, results["online"][b]["fd_loss"], results["cached"][b]["fd_loss"]) for b in students]
    diffs = [abs(o - c) for _, o, c in fd]
    figures = {
        "students": n, "steps": steps, "online_s": online_s, "build_s": build_s, "cached_s": cached_s,
        "ratio_excluding_build": online_s / cached_s, "ratio_including_build": online_s / (build_s + cached_s),
        "per_student": results,
        "fd_loss_max_abs_diff": max(diffs), "fd_loss_max_rel_diff": max(d / abs(o) for d, (_, o, _) in zip(diffs, fd)),
        "break_even_students": break_even,
    }
    print()
    for b, o, c in fd:
        print(f"  {b:<16} FD loss online {o:.5f}  cached {c:.5f}  diff {abs(o - c):.2e}")
    print(f"sweep of {n}: online {online_s:.1f} s, cached {cached_s:.1f} s + build {build_s:.1f} s")
    print(f"wall-time ratio online / cached: {figures['ratio_excluding_build']:.2f}x excluding the build, "
          f"{figures['ratio_including_build']:.2f}x including it")
    print(f"FD-loss difference: max {figures['fd_loss_max_abs_diff']:.2e} "
          f"({100 * figures['fd_loss_max_rel_diff']:.3f} % relative)")
    print(f"break-even: the cache pays for itself from {break_even} student(s)" if break_even else
          "break-even: never (the cache does not save time per student here)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
