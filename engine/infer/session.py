"""Loading a MetaScope model package into an onnxruntime session.

The session is created from the very bytes whose sha256 was checked, so the model that runs is
the model that was verified (a model saved with external data, e.g. over 2 GB, is loaded from its
path so onnxruntime finds the weight files; its sha256 is that of the ``.onnx`` file). The execution provider is chosen by really creating a session:
onnxruntime lists ``CUDAExecutionProvider`` whenever the GPU build is installed, even on a machine
without a usable GPU, and then silently runs on the CPU.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import ConfigError, ModelPackageError
from engine.modelpkg import ModelMetadata, read_metadata

if TYPE_CHECKING:
    import onnxruntime as ort

    from engine.infer.gpu import BoundRunner

DEVICES = ("auto", "cpu", "cuda")
#: most batches the heatmap pipeline runs at once on copies of a CPU session
#: (:meth:`ModelSession.worker_copy`): each holds its own activations in memory
MAX_PARALLEL_BATCHES = 4
IMAGE_TASKS = ("patch_classification", "feature_extractor")

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def available_cores() -> int:
    """CPU cores this process may run on (affinity-aware; at least 1)."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass  # affinity unreadable (some containers): all cores is the honest fallback
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class InputSpec:
    """The image input a model expects, resolved from the ONNX graph and the metadata.

    Attributes:
        name: ONNX input tensor name.
        layout: ``"NCHW"`` or ``"NHWC"``.
        size: square side in pixels fed to the model.
        batch: fixed batch size of the graph, or ``None`` when the batch axis is dynamic.
    """

    name: str
    layout: str
    size: int
    batch: int | None


class ModelSession:
    """A verified model package with a ready onnxruntime session. Thread-compatible for ``run``.

    Attributes:
        path: model file.
        metadata: the package's :class:`~engine.modelpkg.ModelMetadata`.
        sha256: hex digest of the bytes that were loaded.
        provider: execution provider actually in use (``"CUDAExecutionProvider"`` or ``"CPUExecutionProvider"``).
        input: the image input specification (``None`` for non-image models such as MIL aggregators).
        output_name: ONNX output tensor used.
        intra_op_threads: onnxruntime intra-op thread count (CPU provider).
        io_binding: on CUDA, the :class:`~engine.infer.gpu.BoundRunner` that feeds the GPU
            (device buffers reused, pinned host buffers); ``None`` on the CPU.
    """

    def __init__(
        self,
        path: Path,
        metadata: ModelMetadata,
        sha256: str,
        session: ort.InferenceSession,
        input_spec: InputSpec | None,
        input_name: str,
        output_name: str,
        intra_op_threads: int,
        io_binding: BoundRunner | None = None,
    ) -> None:
        self.path = path
        self.metadata = metadata
        self.sha256 = sha256
        self.session = session
        self.input = input_spec
        self.input_name = input_name
        self.output_name = output_name
        self.intra_op_threads = intra_op_threads
        self.provider = session.get_providers()[0]
        self.io_binding = io_binding
        self._copy: ModelSession | None | bool = None  # False: no worker copy possible
        self._copy_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.metadata.name or self.path.stem

    @property
    def device(self) -> str:
        """``"cuda"`` or ``"cpu"``."""
        return "cuda" if self.provider == _CUDA else "cpu"

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a preprocessed batch.

        Args:
            batch: float32 array in the model's layout, ``(N, 3, S, S)`` or ``(N, S, S, 3)``.

        Returns:
            The raw output, ``(N, C)`` (logits, probabilities or features as the metadata says).
            Graphs with a fixed batch size are fed in chunks of that size.
        """
        fixed = self.input.batch if self.input is not None else None
        if self.io_binding is not None:
            return self._run_bound(batch, fixed)
        if fixed is None or batch.shape[0] == fixed:
            return np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0])
        parts = []
        for start in range(0, batch.shape[0], fixed):
            chunk = batch[start : start + fixed]
            n = chunk.shape[0]
            if n < fixed:  # pad the last chunk: the graph accepts exactly ``fixed`` items
                pad = np.zeros((fixed - n, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            parts.append(np.asarray(self.session.run([self.output_name], {self.input_name: chunk})[0])[:n])
        return np.concatenate(parts)

    def _run_bound(self, batch: np.ndarray, fixed: int | None) -> np.ndarray:
        """:meth:`run` through I/O binding (CUDA): same chunking and padding for fixed-batch graphs."""
        assert self.io_binding is not None
        if fixed is None or batch.shape[0] == fixed:
            return self.io_binding.run(batch)
        parts = []
        for start in range(0, batch.shape[0], fixed):
            chunk = batch[start : start + fixed]
            n = chunk.shape[0]
            if n < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), dtype=chunk.dtype)])
            parts.append(self.io_binding.run(chunk)[:n])
        return np.concatenate(parts)

    def batch_size_for(self, requested: int) -> int:
        """Tiles per inference call on this session's device: ``requested`` on the CPU; on CUDA
        at least :data:`~engine.infer.gpu.CUDA_DEFAULT_BATCH`, within the GPU's free memory."""
        if self.io_binding is None or self.input is None:
            return requested
        from engine.infer.gpu import choose_batch_size, cuda_free_bytes

        return choose_batch_size("cuda", requested, self.input.size, cuda_free_bytes(self.io_binding.device_id))

    def input_buffer(self, n: int) -> np.ndarray | None:
        """A float32 host buffer for a batch of ``n`` preprocessed tiles in pinned memory (CUDA),
        or ``None`` (CPU, or no pinned memory available): the caller then allocates its own."""
        if self.io_binding is None or self.input is None:
            return None
        s = self.input.size
        shape = (n, 3, s, s) if self.input.layout == "NCHW" else (n, s, s, 3)
        return self.io_binding.host_buffer(shape)

    def worker_copy(self) -> ModelSession | None:
        """This model on fewer onnxruntime threads, for the heatmap pipeline to run several batches
        at once on such copies instead of one batch on all of this session's threads (see
        :mod:`engine.infer.stream`); loaded on first use and kept.

        One thread per copy, ``intra_op_threads`` batches at once, up to
        :data:`MAX_PARALLEL_BATCHES` of them; beyond that each copy gets a share of the threads
        (8 threads: 4 batches at once on 2 threads each), because every batch in flight holds its
        own activations in memory. ``None`` on CUDA, for a session on one thread, for a model
        without an image input, or when the file no longer has the verified sha256.
        """
        if self.io_binding is not None or self.provider != _CPU or self.intra_op_threads <= 1 or self.input is None:
            return None
        with self._copy_lock:
            if self._copy is None:
                threads = -(-self.intra_op_threads // MAX_PARALLEL_BATCHES)  # per copy
                self._copy = self._load_copy(threads) or False
        return self._copy or None

    def _load_copy(self, threads: int) -> ModelSession | None:
        from engine.infer.external import uses_external_data

        try:
            data = self.path.read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != self.sha256:
            return None  # changed since it was verified: only the loaded session runs
        source: bytes | str = str(self.path.resolve()) if uses_external_data(data) else data
        try:
            session = _create_session(self.path, source, "cpu", threads, False)
        except ModelPackageError:
            return None  # it loaded once: the loaded session runs, as it would have without copies
        return ModelSession(
            self.path, self.metadata, self.sha256, session, self.input, self.input_name, self.output_name, threads
        )

    def describe(self) -> dict[str, Any]:
        """Model identity for result files: name, file, sha256, provider."""
        return {
            "name": self.name,
            "path": str(self.path),
            "sha256": self.sha256,
            "task": self.metadata.task,
            "arch": self.metadata.arch,
            "provider": self.provider,
            "metascope_version": self.metadata.metascope_version,
        }


def load_model(
    path: str | os.PathLike[str],
    device: str = "auto",
    intra_op_threads: int | None = None,
    allow_spinning: bool = False,
) -> ModelSession:
    """Load and verify a MetaScope model package.

    Args:
        path: the ``.onnx`` model package (or plain ONNX with a sidecar JSON).
        device: ``"auto"`` (CUDA when it really works, else CPU), ``"cpu"`` or ``"cuda"``.
        intra_op_threads: CPU threads for one inference; default all cores of this process.
        allow_spinning: let idle onnxruntime threads busy-wait. Off by default because the
            heatmap pipeline reads tiles on the same cores between inference calls, and spinning
            threads would steal that CPU time.

    Raises:
        ModelPackageError: missing/non-ONNX file, no MetaScope metadata, an input spec that does
            not match the metadata, a library model whose sha256 changed.
        ConfigError: unknown device, or ``device="cuda"`` when CUDA cannot be used.
    """
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    p = Path(path)
    if not p.is_file():
        raise ModelPackageError(f"model file not found: {p}")
    try:
        data = p.read_bytes()  # read once: the metadata, the sha256 and onnxruntime all use these bytes
    except OSError as exc:
        raise ModelPackageError(f"cannot read model {p}: {exc.strerror or exc}") from exc
    # only the field headers and metadata strings: onnxruntime parses the graph once, below
    meta = read_metadata(p, data)  # raises ModelPackageError for non-ONNX / no metadata
    digest = hashlib.sha256(data).hexdigest()
    _verify_library(p, digest)

    threads = intra_op_threads if intra_op_threads and intra_op_threads > 0 else available_cores()
    from engine.infer.external import uses_external_data

    # weights in files beside the model (models over 2 GB): onnxruntime loads them from the path
    source: bytes | str = str(p.resolve()) if uses_external_data(data) else data
    session = _create_session(p, source, device, threads, allow_spinning)
    input_name, output_name = _io_names(session, meta, p)
    spec = _check_input(session, meta, input_name, p) if meta.task in IMAGE_TASKS else None
    _check_output(session, meta, output_name, p)
    binding = _cuda_binding(session, input_name, output_name) if spec is not None else None
    return ModelSession(p, meta, digest, session, spec, input_name, output_name, threads, binding)


def _cuda_binding(session: ort.InferenceSession, input_name: str, output_name: str) -> BoundRunner | None:
    """I/O binding for an image model that runs on CUDA; ``None`` on the CPU (plain ``run``)."""
    if session.get_providers()[0] != _CUDA:
        return None
    from engine.infer.gpu import BoundRunner

    try:
        return BoundRunner(session, input_name, output_name, "cuda", 0)
    except Exception as exc:  # onnxruntime's own exception types; plain session.run still works
        import logging

        logging.getLogger(__name__).warning("CUDA I/O binding unavailable, using plain run: %s", exc)
        return None


def _verify_library(path: Path, digest: str) -> None:
    """Compare with the model library's recorded sha256 when ``path`` lives in the library."""
    from engine.library import INDEX_NAME, ModelLibrary

    library = ModelLibrary()
    try:
        in_library = path.parent.resolve() == library.folder.resolve()
    except OSError:
        in_library = False
    if not in_library or not (library.folder / INDEX_NAME).is_file():
        return
    if library.verify(path) != digest:  # file changed between our read and the check
        raise ModelPackageError(f"{path.name} changed while it was being loaded")


def _session_options(threads: int, allow_spinning: bool, quiet: bool) -> ort.SessionOptions:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    # one graph at a time: batches are already large enough to fill the cores
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    if quiet:
        so.log_severity_level = 3  # a failed CUDA probe is expected on CPU machines
    return so


def _create_session(
    path: Path, data: bytes | str, device: str, threads: int, allow_spinning: bool
) -> ort.InferenceSession:
    import onnxruntime as ort

    cuda_error = ""
    if device in ("auto", "cuda"):
        if _CUDA in ort.get_available_providers():
            try:
                sess = ort.InferenceSession(
                    data,
                    sess_options=_session_options(threads, allow_spinning, quiet=True),
                    providers=[_CUDA, _CPU],
                )
            except Exception as exc:  # onnxruntime raises its own exception types (Fail, RuntimeException)
                cuda_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            else:
                if sess.get_providers()[0] == _CUDA:
                    return sess
                cuda_error = "onnxruntime could not initialise CUDA (driver or CUDA libraries missing?)"
        else:
            cuda_error = "this onnxruntime build has no CUDA support (install the 'gpu' extra: onnxruntime-gpu)"
        if device == "cuda":
            raise ConfigError(f"--device cuda was requested but CUDA is not usable: {cuda_error}")
    try:
        return ort.InferenceSession(
            data, sess_options=_session_options(threads, allow_spinning, quiet=False), providers=[_CPU]
        )
    except Exception as exc:  # invalid graph, unsupported opset, ...
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelPackageError(f"onnxruntime cannot load {path.name}: {msg}") from exc


def _io_names(session: ort.InferenceSession, meta: ModelMetadata, path: Path) -> tuple[str, str]:
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    input_name = meta.input_name or inputs[0]
    output_name = meta.output_name or outputs[0]
    if input_name not in inputs:
        raise ModelPackageError(f"{path.name}: metadata names input {input_name!r}, the graph has {inputs}")
    if output_name not in outputs:
        raise ModelPackageError(f"{path.name}: metadata names output {output_name!r}, the graph has {outputs}")
    return input_name, output_name


def _dim(value: Any) -> int | None:
    """A fixed dimension as int, ``None`` for symbolic/unknown dimensions."""
    return value if isinstance(value, int) and value > 0 else None


def _check_input(session: ort.InferenceSession, meta: ModelMetadata, name: str, path: Path) -> InputSpec:
    node = next(i for i in session.get_inputs() if i.name == name)
    shape = list(node.shape)
    if "float" not in node.type:
        raise ModelPackageError(f"{path.name}: input {name!r} has type {node.type}, expected a float tensor")
    if len(shape) != 4:
        raise ModelPackageError(
            f"{path.name}: input {name!r} has shape {shape}, expected 4 dimensions ({meta.input_layout})"
        )
    if meta.input_layout == "NCHW":
        channels, spatial = shape[1], shape[2:4]
    else:
        channels, spatial = shape[3], shape[1:3]
    if _dim(channels) is not None and channels != 3:
        raise ModelPackageError(
            f"{path.name}: input has {channels} channels in {meta.input_layout} layout, expected 3 (RGB); "
            "check input_layout in the metadata"
        )
    for d in spatial:
        if _dim(d) is not None and d != meta.input_size:
            raise ModelPackageError(
                f"{path.name}: input is {spatial[0]}x{spatial[1]} px but the metadata says input_size {meta.input_size}"
            )
    return InputSpec(name=name, layout=meta.input_layout, size=meta.input_size, batch=_dim(shape[0]))


def _check_output(session: ort.InferenceSession, meta: ModelMetadata, name: str, path: Path) -> None:
    node = next(o for o in session.get_outputs() if o.name == name)
    shape = list(node.shape)
    if meta.task == "patch_classification":
        if len(shape) != 2:
            raise ModelPackageError(f"{path.name}: output {name!r} has shape {shape}, expected (batch, classes)")
        n = _dim(shape[1])
        if n is not None and n != len(meta.class_names) and not (n == 1 and len(meta.class_names) == 2):
            raise ModelPackageError(
                f"{path.name}: the model outputs {n} classes but the metadata names {len(meta.class_names)}"
            )
    elif meta.task == "feature_extractor" and meta.feature_dim is not None:
        n = _dim(shape[-1]) if shape else None
        if n is not None and n != meta.feature_dim:
            raise ModelPackageError(
                f"{path.name}: the model outputs {n} features but the metadata says feature_dim {meta.feature_dim}"
            )
