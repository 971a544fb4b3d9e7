"""Runtimes a backbone is measured in: eager PyTorch, ``torch.compile``, onnxruntime, TensorRT (plug-ins).

A runtime turns a built ``nn.Module`` into a :class:`Prepared` model: one
synchronous forward per call on inputs converted once (:meth:`Prepared.inputs`),
so :mod:`zoo.bench` times every runtime the same way. Each one says in one line
why it cannot run here (:meth:`Runtime.check`) before anything is built, and
adds itself to the measurement's environment (``runtime``, ``runtime_version``),
so figures of different runtimes are never compared as if alike.

* ``eager``: the module under ``torch.inference_mode`` (+ autocast for bf16/fp16).
* ``compile``: ``torch.compile(module, mode=...)``, otherwise as eager.
* ``onnxruntime``: the module exported with :mod:`zoo.export.onnx` (dynamic
  batch, fixed size, E-RADIO fused) to a temporary file, checked against
  eager PyTorch, run by an onnxruntime session with the bench's thread count
  (CPU; CUDA through onnxruntime-gpu's CUDA provider). fp32 only.
* ``tensorrt`` (CUDA only): ``torch_tensorrt.compile`` when torch-tensorrt is
  installed, else TensorRT's Python API building an engine from the ONNX
  export; fp16 (Table 7's protocol) or fp32.

A new runtime subclasses :class:`Runtime` and calls :func:`register_runtime`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import statistics
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from zoo.errors import ConfigError, ZooError, unknown_name

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LATENCY_PERCENTILES = (50, 90, 99)


@dataclass
class RuntimeOptions:
    """What a runtime needs to prepare a model.

    Args:
        device: where it runs.
        dtype: ``fp32``, ``bf16`` or ``fp16``.
        compile_mode: a ``torch.compile`` mode (``compile`` runtime).
        threads: CPU threads (onnxruntime's intra-op threads); None: the runtime's default.
        max_batch: the largest batch the model will see (TensorRT's optimisation profile).
        resolution: ``(height, width)`` of the inputs.
        channels_last: NHWC inputs (eager / compile).
    """

    device: torch.device
    dtype: str = "fp32"
    compile_mode: str | None = None
    threads: int | None = None
    max_batch: int = 1
    resolution: tuple[int, int] = (224, 224)
    channels_last: bool = False


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Prepared:
    """A model ready to time: ``run(inputs(x))`` is one complete forward (synchronised)."""

    def __init__(self, device: torch.device, info: dict[str, Any] | None = None) -> None:
        self.device = device
        self.info: dict[str, Any] = dict(info or {})  # recorded with the result (e.g. the export check)

    def inputs(self, x: torch.Tensor) -> Any:
        return x

    def run(self, inputs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Free what the runtime holds (sessions, engines, temporary files)."""


class TorchPrepared(Prepared):
    """eager / compile: the module under inference mode and autocast."""

    def __init__(self, model: nn.Module, options: RuntimeOptions, info: dict[str, Any] | None = None) -> None:
        super().__init__(options.device, info)
        self.model = model
        self.dtype = DTYPES[options.dtype]

    def _autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def run(self, inputs: torch.Tensor) -> Any:
        with torch.inference_mode(), self._autocast():
            out = self.model(inputs)
        synchronize(self.device)  # as timm does: a step's kernels are done when it is counted
        return out


class Runtime:
    """A way to run a model. Subclasses set :attr:`name`, :attr:`description` and implement :meth:`prepare`."""

    name: str = "runtime"
    description: str = ""
    package: str | None = None  # the distribution whose version is recorded

    def check(self, device: torch.device, dtype: str) -> None:
        """Raise a one-line :class:`ZooError` when this runtime cannot run here (nothing is built yet)."""

    def prepare(self, model: nn.Module, options: RuntimeOptions) -> Prepared:  # pragma: no cover - abstract
        raise NotImplementedError

    def version(self) -> str | None:
        if self.package is None:
            return None
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None

    def environment(self) -> dict[str, Any]:
        """What a measurement records about the runtime (part of the environment key)."""
        return {"runtime": self.name, "runtime_version": self.version()}


_RUNTIMES: dict[str, Runtime] = {}


def register_runtime(runtime: Runtime, overwrite: bool = False) -> Runtime:
    if runtime.name in _RUNTIMES and not overwrite:
        raise ValueError(f"runtime '{runtime.name}' is already registered")
    _RUNTIMES[runtime.name] = runtime
    return runtime


def runtime_names() -> list[str]:
    return list(_RUNTIMES)


def get_runtime(name: str) -> Runtime:
    if name not in _RUNTIMES:
        raise unknown_name("runtime", name, _RUNTIMES)
    return _RUNTIMES[name]


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


# --------------------------------------------------------------------------- eager and compile


class EagerRuntime(Runtime):
    name = "eager"
    description = "PyTorch eager mode (inference_mode, autocast for bf16/fp16)"
    package = "torch"

    def prepare(self, model: nn.Module, options: RuntimeOptions) -> Prepared:
        return TorchPrepared(model, options)


class CompileRuntime(Runtime):
    name = "compile"
    description = "torch.compile (mode from --compile, default 'default')"
    package = "torch"

    def prepare(self, model: nn.Module, options: RuntimeOptions) -> Prepared:
        mode = options.compile_mode or "default"
        return TorchPrepared(torch.compile(model, mode=mode), options, {"compile_mode": mode})


# --------------------------------------------------------------------------- onnxruntime


def export_for_runtime(model: nn.Module, options: RuntimeOptions, folder: Path, name: str = "model") -> tuple[Path, dict]:
    """Export ``model`` (a backbone; fused first where it has a deploy mode) to ``folder/<name>.onnx``.

    Batch dynamic (1 .. ``max_batch`` and beyond), height/width fixed at the
    bench resolution. Checked in onnxruntime against eager PyTorch on a batch
    of 2; an export beyond the tolerance is refused (one line).
    """
    import copy

    from zoo.export.onnx import EXTERNAL_DATA_BYTES, check_in_onnxruntime, export_graph, ort_session, require_onnx
    from zoo.export.verify import DEFAULT_TOLERANCE

    require_onnx()
    # CPU copies: the export and its check run on the CPU whatever device the model was moved to
    reference_model = copy.deepcopy(model).cpu().float().eval()
    reference = _Flat(reference_model).eval()
    deploy_model = copy.deepcopy(reference_model)
    if getattr(deploy_model, "supports_fuse", False):
        deploy_model = deploy_model.fuse() or deploy_model
    deploy = _Flat(deploy_model).eval()
    example = torch.randn(2, 3, *options.resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        names = [f"output{i}" for i in range(len(reference(example)))]
        deploy(example)  # eager pass: E-RADIO picks its window for this size
    path = folder / f"{name}.onnx"
    weight_bytes = sum(t.numel() * t.element_size() for t in deploy.state_dict().values())
    export_graph(deploy, example, path, names, {"x": {0: _batch_dim()}}, weight_bytes > EXTERNAL_DATA_BYTES)
    session = ort_session(path, threads=1)
    report = check_in_onnxruntime(session, reference, [example], names, DEFAULT_TOLERANCE)
    del session
    report.raise_if_bad("the ONNX export for the onnxruntime runtime")
    return path, {"export_max_abs_diff": report.max_abs_diff, "export_min_cosine": report.min_cosine}


def _batch_dim() -> Any:
    from torch.export import Dim

    return Dim("batch", min=1, max=65536)


class _Flat(nn.Module):
    """Any module's output as a flat tuple of tensors (a backbone's NamedTuple, a dict, a tensor)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(_flatten(self.model(x)))


def _flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for key in out for t in _flatten(out[key])]
    if isinstance(out, (tuple, list)):
        return [t for item in out if item is not None for t in _flatten(item)]
    return []


class OrtPrepared(Prepared):
    def __init__(self, session: Any, options: RuntimeOptions, folder: tempfile.TemporaryDirectory,
                 info: dict[str, Any]) -> None:
        super().__init__(options.device, info)
        self.session = session
        self.folder = folder
        self.input_name = session.get_inputs()[0].name
        self.cuda = options.device.type == "cuda"

    def inputs(self, x: torch.Tensor) -> Any:
        import numpy as np

        if not self.cuda:
            return x.detach().cpu().float().contiguous().numpy()
        binding = self.session.io_binding()  # inputs stay on the GPU: no host copy in the timed step
        x = x.detach().float().contiguous()
        binding.bind_input(self.input_name, "cuda", self.device.index or 0, np.float32, tuple(x.shape), x.data_ptr())
        for output in self.session.get_outputs():
            binding.bind_output(output.name, "cuda", self.device.index or 0)
        binding._zoo_keepalive = x  # the tensor must outlive the binding
        return binding

    def run(self, inputs: Any) -> Any:
        if self.cuda:
            self.session.run_with_iobinding(inputs)
            return None
        return self.session.run(None, {self.input_name: inputs})

    def close(self) -> None:
        self.session = None
        self.folder.cleanup()


class OnnxRuntimeRuntime(Runtime):
    name = "onnxruntime"
    description = "onnxruntime on the ONNX export (dynamo exporter; fp32)"
    package = "onnxruntime"

    def check(self, device: torch.device, dtype: str) -> None:
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if _missing(m)]
        if missing:
            raise ZooError(f"runtime onnxruntime needs {', '.join(missing)} (not installed): "
                           "pip install 'zoo[export]'")
        if dtype != "fp32":
            raise ConfigError(f"runtime onnxruntime is measured in fp32 (the export is fp32), not {dtype}; "
                              "pass --dtype fp32")
        if device.type == "cuda":
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise ZooError("runtime onnxruntime on CUDA needs onnxruntime-gpu (this onnxruntime has providers "
                               f"{', '.join(onnxruntime.get_available_providers())})")

    def prepare(self, model: nn.Module, options: RuntimeOptions) -> Prepared:
        from zoo.export.onnx import ort_session

        folder = tempfile.TemporaryDirectory(prefix="zoo-ort-")
        try:
            path, info = export_for_runtime(model, options, Path(folder.name))
            providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if options.device.type == "cuda"
                         else ["CPUExecutionProvider"])
            threads = options.threads or torch.get_num_threads()
            session = ort_session(path, threads=threads, providers=providers)
        except BaseException:
            folder.cleanup()
            raise
        return OrtPrepared(session, options, folder, {**info, "ort_threads": threads})


# --------------------------------------------------------------------------- TensorRT


class TensorRTRuntime(Runtime):
    name = "tensorrt"
    description = "TensorRT (torch-tensorrt, or TensorRT's Python API on the ONNX export); CUDA only"
    package = "tensorrt"

    def version(self) -> str | None:
        for package in ("tensorrt", "torch-tensorrt", "torch_tensorrt"):
            try:
                return importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                continue
        return None

    def check(self, device: torch.device, dtype: str) -> None:
        if device.type != "cuda" or not torch.cuda.is_available():
            raise ZooError("runtime tensorrt needs a CUDA GPU (this run is on "
                           f"{device.type}{'' if torch.cuda.is_available() else '; no CUDA device here'})")
        if _missing("torch_tensorrt") and _missing("tensorrt"):
            raise ZooError("runtime tensorrt needs torch-tensorrt or tensorrt, and neither is installed "
                           "(pip install torch-tensorrt, or pip install tensorrt)")
        if dtype == "bf16":
            raise ConfigError("runtime tensorrt measures fp16 (Table 7's protocol) or fp32; pass --dtype fp16")

    def prepare(self, model: nn.Module, options: RuntimeOptions) -> Prepared:
        if not _missing("torch_tensorrt"):
            return self._torch_tensorrt(model, options)
        return self._tensorrt_engine(model, options)

    def _torch_tensorrt(self, model: nn.Module, options: RuntimeOptions) -> Prepared:
        import torch_tensorrt

        height, width = options.resolution
        model = model.to(options.device).eval()
        if getattr(model, "supports_fuse", False):
            model = model.fuse() or model
        precisions = {torch.float16, torch.float32} if options.dtype == "fp16" else {torch.float32}
        spec = torch_tensorrt.Input(min_shape=(1, 3, height, width), opt_shape=(options.max_batch, 3, height, width),
                                    max_shape=(options.max_batch, 3, height, width), dtype=torch.float32)
        compiled = torch_tensorrt.compile(_Flat(model).eval(), ir="dynamo", inputs=[spec],
                                          enabled_precisions=precisions)
        return TorchPrepared(compiled, RuntimeOptions(options.device, "fp32"), {"tensorrt_via": "torch_tensorrt"})

    def _tensorrt_engine(self, model: nn.Module, options: RuntimeOptions) -> Prepared:
        import tensorrt as trt

        folder = tempfile.TemporaryDirectory(prefix="zoo-trt-")
        try:
            cpu_options = RuntimeOptions(torch.device("cpu"), "fp32", resolution=options.resolution)
            path, info = export_for_runtime(model, cpu_options, Path(folder.name))
            logger = trt.Logger(trt.Logger.WARNING)
            builder = trt.Builder(logger)
            network = builder.create_network(0)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(str(path)):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise ZooError(f"TensorRT cannot parse the ONNX export ({errors[:300]})")
            config = builder.create_builder_config()
            if options.dtype == "fp16":
                config.set_flag(trt.BuilderFlag.FP16)
            profile = builder.create_optimization_profile()
            height, width = options.resolution
            name = network.get_input(0).name
            profile.set_shape(name, (1, 3, height, width), (options.max_batch, 3, height, width),
                              (options.max_batch, 3, height, width))
            config.add_optimization_profile(profile)
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise ZooError("TensorRT could not build an engine from the ONNX export")
            engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        finally:
            folder.cleanup()
        return TrtPrepared(engine, options, {**info, "tensorrt_via": "tensorrt (ONNX parser)"})


class TrtPrepared(Prepared):
    """A TensorRT engine run with ``execute_async_v3`` on torch tensors (outputs allocated per input shape)."""

    def __init__(self, engine: Any, options: RuntimeOptions, info: dict[str, Any]) -> None:
        super().__init__(options.device, info)
        import tensorrt as trt

        self.trt = trt
        self.engine = engine
        self.context = engine.create_execution_context()
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_name = next(n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.stream = torch.cuda.Stream(device=options.device)

    def inputs(self, x: torch.Tensor) -> Any:
        x = x.detach().to(self.device, torch.float32).contiguous()
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        buffers = {self.input_name: x}
        for name in self.names:
            if name == self.input_name:
                continue
            shape = tuple(self.context.get_tensor_shape(name))
            buffers[name] = torch.empty(shape, device=self.device, dtype=_torch_dtype(self.engine.get_tensor_dtype(name)))
        return buffers

    def run(self, inputs: dict[str, torch.Tensor]) -> Any:
        self.context.set_input_shape(self.input_name, tuple(inputs[self.input_name].shape))
        for name, tensor in inputs.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return inputs

    def close(self) -> None:
        self.context = None
        self.engine = None


def _torch_dtype(trt_dtype: Any) -> torch.dtype:
    import tensorrt as trt

    return {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
            trt.int8: torch.int8, trt.bool: torch.bool}.get(trt_dtype, torch.float32)


for _runtime in (EagerRuntime(), CompileRuntime(), OnnxRuntimeRuntime(), TensorRTRuntime()):
    register_runtime(_runtime)


# --------------------------------------------------------------------------- latency


@dataclass
class LatencySamples:
    """Batch-1 forward times (seconds) of one model in one runtime."""

    values: list[float] = field(default_factory=list)

    def add(self, prepared: Prepared, inputs: Any, count: int, clock: Callable[[], float] = time.perf_counter) -> None:
        """Time ``count`` single forwards, each on its own."""
        for _ in range(count):
            start = clock()
            prepared.run(inputs)
            self.values.append(clock() - start)

    def summary(self) -> dict[str, Any]:
        """``latency_p50`` / ``latency_p90`` / ``latency_p99`` (ms), ``latency_mean``, the sample count and batch."""
        return latency_summary(self.values)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile with linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no latency samples")
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(values: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {f"latency_p{q}": round(percentile(values, q) * 1000.0, 4) for q in LATENCY_PERCENTILES}
    out.update({"latency_mean": round(statistics.fmean(values) * 1000.0, 4), "latency_samples": len(values),
                "latency_batch_size": 1, "latency_unit": "ms"})
    return out
