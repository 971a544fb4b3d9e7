"""The training loader against a bare decode-and-crop loop, draft-mode JPEG decoding, the data share of a
training step, time to the first step on a large folder, and zoo's shard reader against ``webdataset``'s.

Every measurement uses generated data in a temporary folder (deleted afterwards). Variants run
interleaved, ``--rounds`` times each for ``--seconds`` seconds, and the median img/s is kept, so a
neighbour's load on a shared machine hits every variant alike.

    python benchmarks/loader_throughput.py --threads 1                 # throughput, draft, step share (~3 min)
    python benchmarks/loader_throughput.py --threads 1 --only first-step --images 200000
    python benchmarks/loader_throughput.py --threads 1 --only shards

Figures (img/s) are printed and written as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

IMAGENET_LIKE = (500, 375)


def make_jpegs(folder: Path, count: int, size: tuple[int, int] = IMAGENET_LIKE, seed: int = 0) -> list[Path]:
    """``count`` smooth random JPEGs (quality 90) of ``size``: entropy close to photographs, not noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 12, (size[1], size[0], 3))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
        path = folder / f"{i:06d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


class BareCrops(Dataset):
    """The loop anyone would write: open, convert, crop the same box, resize, to a tensor (no draft)."""

    def __init__(self, reference: Any) -> None:
        self.reference = reference  # a CropDataset: the same images, boxes and flips

    def __len__(self) -> int:
        return len(self.reference.paths)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        from zoo.data import sample_rng
        from zoo.data.crops import random_crop_box

        ref = self.reference
        step, slot = key
        path = ref.paths[ref.image_index(step, slot)]
        with Image.open(path) as image:
            image = image.convert("RGB")
            box = random_crop_box(*image.size, sample_rng(ref.seed, step, slot), ref.scale, ref.ratio)
            view = image.resize((ref.size_hw[1], ref.size_hw[0]), Image.Resampling.BILINEAR, box=box)
        return torch.from_numpy(np.asarray(view, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


def rate(make_loader: Callable[[int], DataLoader], seconds: float, batch: int) -> float:
    """img/s of one loader over ``seconds`` (its first batch, the workers' start-up, not counted)."""
    loader = make_loader(10**6)
    iterator = iter(loader)
    next(iterator)
    images, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        next(iterator)
        images += batch
    elapsed = time.perf_counter() - started
    del iterator, loader
    return images / elapsed


def interleaved(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            results[name].append(run())
    return {name: statistics.median(values) for name, values in results.items()}


def throughput(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from zoo.data import CropDataset, load_images, set_draft, train_loader

    make_jpegs(root / "jpegs", args.images)
    images = load_images("folder", str(root / "jpegs"), holdout=1, warn=False)
    size = (args.crop, args.crop)
    dataset = CropDataset(images.train, size, seed=0, batch_size=args.batch)
    bare = BareCrops(dataset)
    out: dict[str, Any] = {"images": args.images, "image_size": list(IMAGENET_LIKE), "crop": args.crop,
                           "batch": args.batch, "threads": args.threads}
    for workers in args.workers:
        def zoo_loader(steps: int, w: int = workers) -> DataLoader:
            return train_loader(dataset, 0, steps, args.batch, workers=w)

        def bare_loader(steps: int, w: int = workers) -> DataLoader:
            from zoo.data import StepBatchSampler

            return DataLoader(bare, batch_sampler=StepBatchSampler(0, steps, args.batch), num_workers=w)

        def with_draft(enabled: bool, w: int = workers) -> float:
            old = set_draft(enabled)  # forked workers inherit the setting
            try:
                return rate(lambda s: zoo_loader(s, w), args.seconds, args.batch)
            finally:
                set_draft(old)

        found = interleaved({
            "zoo": lambda: with_draft(True),
            "zoo_no_draft": lambda: with_draft(False),
            "bare": lambda: rate(bare_loader, args.seconds, args.batch),
        }, args.rounds)
        out[f"workers_{workers}"] = {**{k: round(v, 1) for k, v in found.items()},
                                     "ratio_zoo_vs_bare": round(found["zoo"] / found["bare"], 3),
                                     "ratio_zoo_no_draft_vs_bare": round(found["zoo_no_draft"] / found["bare"], 3),
                                     "draft_speedup": round(found["zoo"] / found["zoo_no_draft"], 3)}
        print(f"workers={workers}: {out[f'workers_{workers}']}", flush=True)
    return out


def draft(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Decode + crop in one process, draft mode on vs off, for image sizes x output sizes (the same boxes)."""
    from zoo.data import CropDataset, set_draft

    out: dict[str, Any] = {}
    for width, height in (IMAGENET_LIKE, (1024, 768)):
        paths = make_jpegs(root / f"draft-{width}", max(8, args.images // 4), (width, height))
        for crop in (224, 112):
            dataset = CropDataset(paths, (crop, crop), seed=0, batch_size=1)

            def run(enabled: bool) -> float:
                old = set_draft(enabled)
                try:
                    n, t = 0, time.perf_counter()
                    while time.perf_counter() - t < args.seconds:
                        dataset[(n, 0)]
                        n += 1
                    return n / (time.perf_counter() - t)
                finally:
                    set_draft(old)

            found = interleaved({"draft": lambda: run(True), "full": lambda: run(False)}, args.rounds)
            key = f"{width}x{height}_to_{crop}"
            out[key] = {**{k: round(v, 1) for k, v in found.items()},
                        "speedup": round(found["draft"] / found["full"], 3)}
            print(f"{key}: {out[key]}", flush=True)
    return out


def step_share(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Share of a training step spent waiting for data: a timm ResNet-18 forward+backward at the crop size."""
    import timm

    from zoo.data import CropDataset, load_images, student_view, train_loader

    folder = root / "jpegs"
    if not folder.is_dir():
        make_jpegs(folder, args.images)
    images = load_images("folder", str(folder), holdout=1, warn=False)
    dataset = CropDataset(images.train, (args.crop, args.crop), seed=0, batch_size=args.batch)
    model = timm.create_model("resnet18", pretrained=False, num_classes=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    out: dict[str, Any] = {"model": "resnet18 fwd+bwd", "crop": args.crop, "batch": args.batch}
    for workers in args.workers:
        loader = train_loader(dataset, 0, args.steps + 1, args.batch, workers=workers)
        iterator = iter(loader)
        batch = next(iterator)  # start-up not counted
        waiting, total = 0.0, time.perf_counter()
        for _ in range(args.steps):
            started = time.perf_counter()
            batch = next(iterator)
            waiting += time.perf_counter() - started
            loss = model(student_view(batch, (args.crop, args.crop))).logsumexp(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        total = time.perf_counter() - total
        del iterator, loader
        out[f"workers_{workers}"] = {"data_share": round(waiting / total, 3), "step_s": round(total / args.steps, 3)}
        print(f"workers={workers}: {out[f'workers_{workers}']}", flush=True)
    return out


def _worker_memory(pid: int) -> dict[str, float]:
    """RSS and the private (unshared) part of a process, in MB."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            parts = line.split()
            if parts[0] in ("Rss:", "Pss:", "Private_Clean:", "Private_Dirty:"):
                fields[parts[0][:-1]] = int(parts[1]) / 1024
    return {"rss_mb": round(fields["Rss"], 1), "pss_mb": round(fields["Pss"], 1),
            "private_mb": round(fields["Private_Clean"] + fields["Private_Dirty"], 1)}


def first_step(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """A folder of ``--images`` tiny images in 1000 class folders: listing, load_images, first batch; twice
    (the second run reads the listing cache); loader worker memory."""
    from zoo.data import CropDataset, load_images, train_loader

    folder = root / "large"
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(png, format="PNG")
    data = png.getvalue()
    started = time.perf_counter()
    for i in range(args.images):
        sub = folder / f"n{i % 1000:08d}"
        if i < 1000:
            sub.mkdir(parents=True)
        with open(sub / f"img_{i:07d}.png", "wb") as handle:
            handle.write(data)
    out: dict[str, Any] = {"images": args.images, "generate_s": round(time.perf_counter() - started, 1)}
    for attempt in ("cold", "cached"):
        started = time.perf_counter()
        images = load_images("folder", str(folder), holdout=2, warn=False)
        loaded = time.perf_counter() - started
        dataset = CropDataset(images.train, (64, 64), seed=0, batch_size=args.batch)
        loader = train_loader(dataset, 0, 100, args.batch, workers=2)
        iterator = iter(loader)
        next(iterator)
        first = time.perf_counter() - started
        memory = [_worker_memory(w.pid) for w in iterator._workers]  # noqa: SLF001 - measuring the workers
        out[attempt] = {"listing_s": round(images.listing_seconds, 2), "load_images_s": round(loaded, 2),
                        "first_batch_s": round(first, 2), "listing_cached": images.listing_cached,
                        "verified": images.verified, "list_bytes": images.train.nbytes(),
                        "workers": memory}
        print(f"{attempt}: {out[attempt]}", flush=True)
        del iterator, loader
    return out


def shards(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Decode + crop throughput from shards: zoo's index (pread per sample) vs webdataset's streaming pipeline."""
    import webdataset as wds

    from zoo.data import CropDataset, load_images
    from zoo.data.crops import random_crop_box, sample_rng

    paths = make_jpegs(root / "jpegs", args.images)
    shard_count = 4
    for s in range(shard_count):
        with wds.TarWriter(str(root / f"shard-{s:02d}.tar")) as writer:
            for i, path in enumerate(paths[s::shard_count]):
                writer.write({"__key__": f"{s}-{i:06d}", "jpg": path.read_bytes(), "cls": i % 10})
    pattern = str(root / "shard-{00..03}.tar")
    started = time.perf_counter()
    images = load_images("webdataset", pattern, holdout=1, warn=False, verify_limit=0)
    index_s = time.perf_counter() - started
    dataset = CropDataset(images.train, (args.crop, args.crop), seed=0, batch_size=1)
    size = (args.crop, args.crop)

    def zoo_pass() -> float:
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < args.seconds:
            dataset[(n, 0)]
            n += 1
        return n / (time.perf_counter() - t)

    def wds_pass() -> float:
        pipeline = wds.WebDataset(pattern, shardshuffle=False).decode("pil")
        n, t = 0, time.perf_counter()
        for sample in pipeline:
            image = sample["jpg"].convert("RGB")
            box = random_crop_box(*image.size, sample_rng(0, n, 0))
            view = image.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
            torch.from_numpy(np.asarray(view, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
            n += 1
            if time.perf_counter() - t >= args.seconds:
                break
        return n / (time.perf_counter() - t)

    found = interleaved({"zoo_index": zoo_pass, "webdataset": wds_pass}, args.rounds)
    out = {"index_build_s": round(index_s, 3), **{k: round(v, 1) for k, v in found.items()},
           "ratio_zoo_vs_webdataset": round(found["zoo_index"] / found["webdataset"], 3)}
    print(out, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("throughput", "draft", "step-share", "first-step", "shards"),
                        action="append")
    parser.add_argument("--images", type=int, default=None, help="generated images (default 64; first-step 200000)")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--seconds", type=float, default=3.0, help="per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="training steps per worker count (step-share)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--tmp", type=Path, default=None, help="where to generate the data (default: system temp)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    only = args.only or ["throughput", "draft", "step-share"]
    results: dict[str, Any] = {}
    root = Path(tempfile.mkdtemp(prefix="zoo-loader-", dir=args.tmp))
    os.environ["ZOO_CACHE_DIR"] = str(root / "cache")  # listings and shard indexes go with the data, then away
    try:
        for name in only:
            images = args.images or (200_000 if name == "first-step" else 64)
            run_args = argparse.Namespace(**{**vars(args), "images": images})
            results[name] = {"throughput": throughput, "draft": draft, "step-share": step_share,
                             "first-step": first_step, "shards": shards}[name](run_args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
