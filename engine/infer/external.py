"""ONNX models saved with external data (weights in files beside the ``.onnx``, as for models
over 2 GB): detected from the serialised model without parsing it, so the session is created from
the model's path (onnxruntime then finds the weight files next to it) instead of from its bytes.
"""

from __future__ import annotations

import io

from engine.modelpkg import _fields, _NotProtobuf

# onnx.proto: ModelProto.graph = 7; GraphProto.initializer = 5, sparse_initializer = 15,
# node = 1; TensorProto.external_data = 13, data_location = 14 (EXTERNAL = 1)
_MODEL_GRAPH, _GRAPH_INITIALIZER, _GRAPH_SPARSE = 7, 5, 15
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1


def _tensor_is_external(fh: io.BytesIO, end: int) -> bool:
    for number, wire, value in _fields(fh, end):
        if number == _TENSOR_DATA_LOCATION and wire == 0 and value == _EXTERNAL:
            return True
        if number == _TENSOR_EXTERNAL_DATA and wire == 2:
            return True
    return False


def uses_external_data(data: bytes) -> bool:
    """Whether a serialised ONNX model keeps any initializer's weights in external files."""
    fh = io.BytesIO(data)
    try:
        for number, wire, n in _fields(fh, len(data)):
            if number != _MODEL_GRAPH or wire != 2:
                continue
            for g_number, g_wire, g_n in _fields(fh, fh.tell() + n):
                initializer = g_wire == 2 and g_number in (_GRAPH_INITIALIZER, _GRAPH_SPARSE)
                if initializer and _tensor_is_external(fh, fh.tell() + g_n):
                    return True
    except _NotProtobuf:
        return False  # not parseable here: onnxruntime reports the real problem
    return False
