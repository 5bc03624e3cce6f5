"""The CUDA side of inference: I/O binding, pinned host buffers, batch size and reader count.

Used by :mod:`engine.infer.session` only when onnxruntime really runs on the CUDA execution
provider; the CPU path never touches this module's objects (its ``run`` is unchanged).

- :class:`BoundRunner` feeds a session through onnxruntime I/O binding: the batch is copied into
  a device buffer that is allocated once per batch shape (``OrtValue.update_inplace``), the
  output is bound on the device and copied back once, so no per-batch device allocation happens.
- Host buffers for batches are page-locked ("pinned") where onnxruntime can allocate such memory
  (the CUDA execution provider's ``HOST_ACCESSIBLE`` allocator), else through PyTorch when it is
  installed with CUDA; copies from pinned memory run at full PCIe / NVLink speed. Without either
  the buffers are ordinary memory (still correct, a little slower).
- The batch size for the GPU is chosen from its free memory (default 256 tiles); tile decoding
  stays on CPU threads, more of them than on a CPU-only run since the GPU no longer competes
  for the cores.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort

CUDA_EP = "CUDAExecutionProvider"
#: tiles per inference call on a GPU when its free memory is unknown
CUDA_DEFAULT_BATCH = 256
#: never more than this many tiles per call: larger batches only delay the first results
CUDA_MAX_BATCH = 1024
CUDA_MIN_BATCH = 16
#: device memory one tile needs, as a multiple of its float32 input (activations, workspace)
ACTIVATION_FACTOR = 48
#: share of the GPU's free memory inference may plan to use
MEMORY_SHARE = 0.5
#: tile reader threads on a GPU run: decoding is the bottleneck there
CUDA_MAX_READERS = 32


def choose_batch_size(device: str, requested: int, input_size: int, free_bytes: int | None = None) -> int:
    """Tiles per inference call for a device.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        requested: the configured batch size (kept as is on the CPU).
        input_size: model input side in pixels.
        free_bytes: free GPU memory, when known.

    Returns:
        On the CPU ``requested``. On CUDA the larger of ``requested`` and
        :data:`CUDA_DEFAULT_BATCH`, limited to what fits in :data:`MEMORY_SHARE` of the free
        memory (a power of two, :data:`CUDA_MIN_BATCH` to :data:`CUDA_MAX_BATCH`).
    """
    if device != "cuda":
        return requested
    want = max(int(requested), CUDA_DEFAULT_BATCH)
    if free_bytes is None or free_bytes <= 0:
        return min(want, CUDA_MAX_BATCH)
    per_tile = 3 * int(input_size) ** 2 * 4 * ACTIVATION_FACTOR
    fits = int(free_bytes * MEMORY_SHARE // max(per_tile, 1))
    cap = CUDA_MIN_BATCH
    while cap * 2 <= min(fits, CUDA_MAX_BATCH):
        cap *= 2
    return max(CUDA_MIN_BATCH, min(want, cap))


def choose_read_workers(device: str, configured: int, resolved: int, cores: int) -> int:
    """Tile reader threads: unchanged on the CPU; on CUDA (automatic choice) all cores but one."""
    if device != "cuda" or configured:
        return resolved
    return max(2, min(CUDA_MAX_READERS, cores - 1))


def cuda_free_bytes(device_id: int = 0) -> int | None:
    """Free memory of a CUDA device in bytes, through PyTorch when it has CUDA; else ``None``."""
    try:
        import torch
    except ImportError:  # torch is optional at inference
        return None
    try:
        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(device_id)
    except RuntimeError:  # a driver that torch cannot use: the default batch size is safe
        return None
    return int(free)


class BoundRunner:
    """Runs one onnxruntime session through I/O binding on one device.

    Thread-safe (one run at a time). ``device_type`` is ``"cuda"`` in use; ``"cpu"`` works too
    (tests check the binding logic there against ``session.run``).
    """

    _SHAPES = 4  # device input buffers kept (full batch, last partial batch, ...)

    def __init__(
        self,
        session: ort.InferenceSession,
        input_name: str,
        output_name: str,
        device_type: str = "cuda",
        device_id: int = 0,
    ) -> None:
        self.session = session
        self.input_name = input_name
        self.output_name = output_name
        self.device_type = device_type
        self.device_id = device_id
        self._binding = session.io_binding()
        self._inputs: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._lock = threading.Lock()  # one run at a time
        self._pin_lock = threading.Lock()  # reader threads asking for buffers never wait for a run
        self._pinned_alive: dict[int, Any] = {}
        self._pinned_how: str | None = None
        self._pinned_ready = False

    def run(self, batch: np.ndarray) -> np.ndarray:
        """One graph call on ``batch`` (float32, C-contiguous); returns the output on the host."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            dev = self._device_input(x.shape)
            dev.update_inplace(x)  # host -> device copy (DMA straight from pinned memory)
            b = self._binding
            b.bind_ortvalue_input(self.input_name, dev)
            b.bind_output(self.output_name, self.device_type, self.device_id)
            self.session.run_with_iobinding(b)
            return np.asarray(b.copy_outputs_to_cpu()[0])

    def _device_input(self, shape: tuple[int, ...]) -> Any:
        import onnxruntime as ort

        dev = self._inputs.get(shape)
        if dev is None:
            dev = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self.device_type, self.device_id)
            self._inputs[shape] = dev
            while len(self._inputs) > self._SHAPES:
                self._inputs.popitem(last=False)
        else:
            self._inputs.move_to_end(shape)
        return dev

    # -- pinned host buffers -----------------------------------------------------------------
    @property
    def pinned(self) -> str | None:
        """How host buffers are pinned: ``"onnxruntime"``, ``"torch"`` or ``None`` (not pinned/not yet asked)."""
        return self._pinned_how

    def host_buffer(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """A float32 host array of ``shape`` in page-locked memory, or ``None`` where none can be had."""
        if self.device_type != "cuda":
            return None
        with self._pin_lock:
            if not self._pinned_ready:
                self._pinned_ready = True
                self._pinned_how = _pinned_backend(self.device_id)
            how = self._pinned_how
        if how == "onnxruntime":
            arr = self._ort_pinned(shape)
            if arr is not None:
                return arr
            self._pinned_how = how = "torch" if _torch_cuda() else None
        if how == "torch":
            import torch

            t = torch.empty(tuple(shape), dtype=torch.float32, pin_memory=True)
            arr = t.numpy()
            self._keep(arr, t)
            return arr
        return None

    def _ort_pinned(self, shape: tuple[int, ...]) -> np.ndarray | None:
        import onnxruntime as ort

        info = _ort_host_memory(self.device_id)
        if info is None:
            return None
        try:
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, memory_info=info)
            arr = value.numpy()
        except (TypeError, RuntimeError, ValueError):  # older onnxruntime without memory_info
            return None
        # only a zero-copy view is of use: the pipeline writes batches into it in place
        if arr.ctypes.data != value.data_ptr() or not arr.flags.writeable or arr.shape != tuple(shape):
            return None
        self._keep(arr, value)
        return arr

    def _keep(self, arr: np.ndarray, owner: Any) -> None:
        """Keep ``owner`` (the memory's owner) alive exactly as long as ``arr``."""
        key = id(arr)
        self._pinned_alive[key] = owner
        weakref.finalize(arr, self._pinned_alive.pop, key, None)


def _ort_host_memory(device_id: int) -> Any:
    """The CUDA execution provider's host-accessible (pinned) memory info, when onnxruntime has one."""
    import onnxruntime as ort

    get = getattr(ort, "get_ep_devices", None)
    kind = getattr(getattr(ort, "OrtDeviceMemoryType", None), "HOST_ACCESSIBLE", None)
    if get is None or kind is None:
        return None
    try:
        devices = [d for d in get() if d.ep_name == CUDA_EP]
    except RuntimeError:
        return None
    for d in devices:
        did = getattr(d.device, "device_id", 0)
        if did in (device_id, 0) or len(devices) == 1:
            try:
                return d.memory_info(kind)
            except RuntimeError:
                return None
    return None


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    try:
        return bool(torch.cuda.is_available())
    except RuntimeError:
        return False


def _pinned_backend(device_id: int) -> str | None:
    if _ort_host_memory(device_id) is not None:
        return "onnxruntime"
    return "torch" if _torch_cuda() else None
