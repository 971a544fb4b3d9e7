"""``zoo export``: a run's student (or a backbone) as ONNX, a timm folder or a Hugging Face folder."""

from __future__ import annotations

import click

from zoo.commands.options import RESOLUTION


@click.command("export")
@click.argument("source", metavar="RUN_OR_BACKBONE")
@click.option("--format", "fmt", type=click.Choice(["onnx", "timm", "hf"]), required=True,
              help="onnx: one graph for onnxruntime/TensorRT; timm: a folder timm.create_model('local-dir:...') "
                   "loads; hf: the Hugging Face Hub layout with a model card.")
@click.option("--out", "-o", default=None, metavar="PATH",
              help="The .onnx file or the folder to write [default: RUN/export/model.onnx|timm|hf, or "
                   "exports/BACKBONE/... for a backbone name].")
@click.option("--with-heads/--no-heads", "with_heads", default=None,
              help="Include the adaptor heads' outputs, in each teacher's space [default: onnx no, hf yes when "
                   "the run has heads; timm never].")
@click.option("--resolution", "-r", type=RESOLUTION, default=None,
              help="Input size N or HxW [default: the size the run trained at, or the backbone's default]. "
                   "E-RADIO is exported for one size: export once per resolution.")
@click.option("--tolerance", type=float, default=None, metavar="T",
              help="Refuse the export when max |export - eager| > T x max(1, max |eager|) or a cosine < 0.9999 "
                   "[default: 1e-3].")
@click.option("--force", is_flag=True, help="Replace an existing export at the target.")
def export_command(source, fmt, out, with_heads, resolution, tolerance, force) -> None:
    """Export RUN_OR_BACKBONE (a run folder; or a registry name / backbone .yaml
    file, exported with random initial weights) and check it against the eager
    student: the export is run on the same input as eager PyTorch, the max abs
    difference and cosine are printed and stored beside it (model.onnx.json,
    export.json), and an export outside the tolerance is refused (exit 2,
    nothing written).

    \b
    Examples:
      zoo export runs/resnet-18-smoke-... --format onnx
      zoo export runs/resnet-18-smoke-... --format onnx --with-heads --out student.onnx
      zoo export runs/resnet-18-smoke-... --format timm --out my-student
      zoo export runs/resnet-18-smoke-... --format hf --out hf/my-student
      zoo export eradio-b --format onnx --resolution 512      # random init, one graph per size
    """
    from zoo.export import DEFAULT_TOLERANCE, export
    from zoo.ui import console

    result = export(source, fmt, out, resolution=resolution, with_heads=with_heads,
                    tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance, force=force)
    report = result.report
    console.print(f"wrote {result.path} ({fmt})", highlight=False)
    for diff in report.diffs:
        console.print(f"  {'x'.join(map(str, diff.shape))} {diff.describe()}", highlight=False, markup=False)
    console.print(f"check: {report.summary_line()}", highlight=False, markup=False)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if fmt == "onnx":
        axes = result.info.get("dynamic_axes", {})
        dims = "batch" + (", height, width" if axes.get("height") else " (height x width fixed)")
        console.print(f"dynamic: {dims}; input '{result.info['input']}' [B, 3, H, W], ImageNet-normalised; "
                      f"outputs {', '.join(result.info['outputs'])}", highlight=False, markup=False)
    if fmt == "hf":
        console.print("push it as it is: huggingface_hub.upload_folder(repo_id='<user>/<repo>', "
                      f"folder_path='{result.path}') (nothing was uploaded)", highlight=False, markup=False)
