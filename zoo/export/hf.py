"""The Hugging Face Hub folder layout: config.json, model.safetensors, adaptors.safetensors, README.md.

``config.json`` and ``model.safetensors`` are timm's layout (:mod:`zoo.export.timm_folder`),
so once pushed, ``timm.create_model("hf-hub:<user>/<repo>", pretrained=True)``
loads a timm-architecture student; every student loads with :func:`zoo.load`
from the folder. ``adaptors.safetensors`` holds the adaptor heads
(``heads.*``) and the run's PHI-S statistics (``standardizer.*``);
``run_record.json`` the run's record; ``README.md`` is the model card written
from the record: teachers with their weight hashes, recipe, steps, FD loss,
throughput with the environment it was measured in, and a warning at the top
when the teachers were random networks or the weights were never trained.

Nothing is uploaded: ``huggingface_hub.upload_folder(repo_id=..., folder_path=...)``
(or ``huggingface-cli upload <repo> <folder>``) pushes the folder as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from zoo.atomic import atomic_write_json, atomic_write_text
from zoo.errors import ZooError
from zoo.export.load import ADAPTORS_FILE, HEADS_PREFIX, RECORD_FILE, STANDARDIZER_PREFIX, load_exported
from zoo.export.metadata import preprocessing
from zoo.export.source import ExportSource
from zoo.export.staging import check_target, publish_dir, staged_dir
from zoo.export.timm_folder import (CONFIG_FILE, REPORT_FILE, WEIGHTS_FILE, TimmSpec, timm_spec, write_model_files,
                                    write_report, write_weights)
from zoo.export.verify import DEFAULT_TOLERANCE, CheckReport, ExportResult, compare, merge

CARD_FILE = "README.md"


def adaptor_state(source: ExportSource) -> dict[str, torch.Tensor]:
    """``heads.*`` and ``standardizer.*`` tensors, ready for safetensors."""
    state = {HEADS_PREFIX + k: v for k, v in source.heads.state_dict().items()}
    if source.standardizer is not None:
        state.update({STANDARDIZER_PREFIX + k: v for k, v in source.standardizer.state_dict().items()})
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def check_hf_folder(folder: Path, source: ExportSource, tolerance: float, with_heads: bool) -> CheckReport:
    """Load ``folder`` with :func:`zoo.load` and compare backbone and adaptor outputs with the eager student."""
    loaded = load_exported(folder)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *source.resolution, generator=generator)
    with torch.no_grad():
        expected = source.backbone(x)
        got = loaded.backbone(x)
        diffs = [compare("summary", got[0], expected[0]), compare("features", got[1], expected[1])]
        if with_heads:
            want = source.teacher_outputs(expected)
            have = loaded.adaptors(got)
            if sorted(have) != sorted(want):
                raise ZooError(f"refused: the exported folder's heads {sorted(have)} are not the run's {sorted(want)}")
            for name in want:
                if want[name].summary is not None:
                    diffs.append(compare(f"{name}.summary", have[name].summary, want[name].summary))
                diffs.append(compare(f"{name}.features", have[name].features, want[name].features))
    return merge([CheckReport(diffs, tolerance, [list(x.shape)], "zoo.load")])


def export_hf(source: ExportSource, out: str | Path, with_heads: bool | None = None,
              tolerance: float = DEFAULT_TOLERANCE, force: bool = False) -> ExportResult:
    """Write the hub folder ``out`` (heads included by default when the run has them)."""
    out = Path(out)
    check_target(out, force)
    with_heads = source.heads is not None if with_heads is None else with_heads
    if with_heads and source.heads is None:
        raise ZooError(f"--with-heads: {source.label} has no adaptor heads (only a run folder has them)")
    spec = timm_spec(source, for_timm=False)
    notes = source.notes() + spec.notes
    files = [CONFIG_FILE, WEIGHTS_FILE]
    with staged_dir(out) as tmp:
        write_model_files(tmp, source, spec)
        if with_heads:
            write_weights(tmp / ADAPTORS_FILE, adaptor_state(source))
            files.append(ADAPTORS_FILE)
        else:
            _drop_heads(tmp)
        if source.record is not None:
            atomic_write_json(tmp / RECORD_FILE, source.record.to_dict())
            files.append(RECORD_FILE)
        report = check_hf_folder(tmp, source, tolerance, with_heads)
        report.notes = notes
        report.raise_if_bad(f"the hf folder of {source.label}")
        atomic_write_text(tmp / CARD_FILE, model_card(source, spec, report, with_heads, out.name))
        files.append(CARD_FILE)
        write_report(tmp, source, "hf", files, report, {"architecture": spec.architecture,
                                                          "heads": with_heads})
        publish_dir(tmp, out)
    return ExportResult("hf", out, report, files + [REPORT_FILE], notes,
                        {"architecture": spec.architecture, "heads": with_heads})


def _drop_heads(folder: Path) -> None:
    """An export without heads says so in its ``zoo`` block (zoo.load then gives no adaptors)."""
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    config["zoo"]["heads"] = []
    atomic_write_json(folder / CONFIG_FILE, config)


# --------------------------------------------------------------------------- the model card


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "not recorded"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _warnings(source: ExportSource) -> list[str]:
    lines = []
    if source.random_teacher:
        lines.append("> **⚠️ Random teacher: not a real distillation result.** This student was distilled from "
                     "small fixed-seed *random* networks (`clip:tiny`, `dinov2:tiny`, ...), used to test the "
                     "machinery. Its features mean nothing; do not use it for any task.")
    if source.random_init:
        lines.append("> **⚠️ Random initialisation: never trained.** These weights are the architecture's random "
                     "initial weights, exported from its name; they are useful only to test a deployment path.")
    return lines


def _teachers_table(source: ExportSource) -> list[str]:
    teachers = source.record.teachers if source.record else []
    if not teachers:
        return ["No teachers (no distillation run)."]
    rows = ["| name | spec | weights | sha256 | summary dim | feature dim |", "|---|---|---|---|---|---|"]
    for t in teachers:
        weights = "**random (fixed seed)**" if t.get("random") else (t.get("weights") or "pretrained")
        sha = t.get("weights_sha256")
        rows.append(f"| {t.get('name')} | `{t.get('spec')}` | {weights} | {f'`{sha}`' if sha else '—'} | "
                    f"{t.get('summary_dim') or '—'} | {t.get('feature_dim')} |")
    return rows


def _throughput(record: Any) -> str:
    tp = (record.throughput if record else None) or {}
    if not tp.get("median"):
        return "not measured"
    env = [f"{tp.get('device_name') or tp.get('device')}", f"batch {tp.get('batch_size')}",
           "x".join(map(str, tp.get("resolution") or [])), str(tp.get("dtype")),
           f"runtime {tp.get('runtime', 'eager')}"]
    if tp.get("threads") is not None and str(tp.get("device", "")).startswith("cpu"):
        env.append(f"{tp['threads']} threads")
    if tp.get("compile"):
        env.append(f"compile {tp['compile']}")
    return f"{tp['median']:.1f} img/s median ({', '.join(env)})"


def model_card(source: ExportSource, spec: TimmSpec, report: CheckReport, with_heads: bool, repo_name: str) -> str:
    """README.md: front matter for the hub, warnings first, then the record's figures and how to load it."""
    record = source.record
    prep = preprocessing(source)
    height, width = source.resolution
    tags = ["image-feature-extraction", "zoo", "knowledge-distillation", "am-radio"]
    front = ["---", f"library_name: {'timm' if spec.architecture else 'zoo'}", "tags:"]
    front += [f"- {tag}" for tag in tags]
    front += ["---", ""]
    title = f"# {source.name}: {'distilled with zoo' if record else 'zoo backbone (random init)'}"
    lines = front + [title, ""] + _warnings(source)
    if lines[-1] != "":
        lines.append("")
    lines += [
        f"Backbone `{source.name}`" + (f" (family {source.family})" if source.family else "")
        + (f", timm architecture `{spec.architecture}`" if spec.architecture else ", not a timm architecture")
        + f", trained at {height}x{width} px. Outputs: `summary` [B, {source.backbone.summary_dim}] and `features` "
        f"[B, {source.backbone.feature_dim}, H/{source.backbone.stride}, W/{source.backbone.stride}]"
        + (f"; adaptor heads for {', '.join(source.head_names)} (in each teacher's space)." if with_heads else "."),
        "",
        "## Teachers", "",
        *_teachers_table(source), "",
        "## Training", "",
        f"- run: `{record.run_id}` ({record.status})" if record else "- run: none",
        f"- recipe: {_fmt(record.recipe) if record else '—'}",
        f"- steps: {_fmt(record.steps) if record else '—'}",
        f"- FD loss (held-out, `fd_loss`): {_fmt(record.fd_loss) if record else '—'}",
        f"- FD loss (training, last steps, `fd_loss_train`): {_fmt(record.fd_loss_train) if record else '—'}",
        f"- PHI-S standardised targets: {'yes' if source.standardizer is not None else 'no'}",
        f"- throughput: {_throughput(record)}",
        "",
        "## Preprocessing", "",
        f"Images in [0, 1], resized to {height}x{width} ({prep['interpolation']}, antialiased, no crop), normalised "
        f"with mean {prep['mean']} and std {prep['std']}. Other sizes: {source.backbone.size_rule.describe()}.",
        "",
        "## Use", "",
        "```python",
        "import zoo",
        f"student = zoo.load('{repo_name}')          # this folder",
        "out, adaptors = student(images)        # images [B, 3, H, W] in [0, 1]",
        "out.summary, out.features" + (f"; adaptors['{source.head_names[0]}'].summary" if with_heads else ""),
        "```",
        "",
    ]
    if spec.architecture:
        prefix = "import eradio  # registers eradio_* in timm\n" if spec.architecture.startswith("eradio") else ""
        lines += ["With timm (backbone only, after pushing the folder or from disk):", "", "```python",
                  f"import timm\n{prefix}model = timm.create_model('local-dir:{repo_name}', pretrained=True)", "```", ""]
    lines += [
        "## Export check", "",
        f"{report.summary_line()}.", "",
        *[f"- {note}" for note in report.notes],
        "",
        "Push with `huggingface_hub.upload_folder(repo_id='<user>/<repo>', folder_path='<this folder>')` "
        "(or `huggingface-cli upload <user>/<repo> <this folder>`); nothing was uploaded by zoo.",
        "",
    ]
    return "\n".join(lines)
