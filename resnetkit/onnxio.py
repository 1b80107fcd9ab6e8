"""ONNX files: writing a network as one, quantizing it to int8, and reading one back.

Export goes through ``torch.export`` (``torch.onnx.export(dynamo=True)``): the network is
traced once into a graph of ATen operators, translated to ONNX and optimised by onnxscript,
which folds every eval-mode BatchNorm into the convolution before it. The batch dimension is
fixed (1 by default, what a latency-bound server sends) or, with ``dynamic_batch``, symbolic.

Every metadata key of a ``model.safetensors`` (model name, classes, channel statistics, how the
model was trained and evaluated) is written into the ONNX model's ``metadata_props`` as a JSON
string, exactly as safetensors stores it, so an ``.onnx`` file alone is enough to predict and to
evaluate; ``export`` and ``quantization`` keys say how the file itself was made.

Int8 is static post-training quantization with onnxruntime's quantizer in the QDQ format: each
quantized tensor gets a QuantizeLinear/DequantizeLinear pair, and onnxruntime fuses
DequantizeLinear -> Conv -> QuantizeLinear into one integer convolution (QLinearConv) at load
time. Weights are int8, symmetric, with one scale per output channel (ResNet filters differ in
range by orders of magnitude, one scale per tensor would crush the small ones); activations are
uint8 with a scale and zero point from the minimum and maximum each tensor takes on real
calibration images. On x86 the integer kernels multiply uint8 activations by int8 weights;
without VNNI they add pairs of products in 16 bits (``vpmaddubsw``), which can saturate:
``reduce_range`` keeps weights to 7 bits so that it cannot. The caller decides (inference.py
reads the CPU's flags) and the choice is recorded in the metadata.

The exporter and the quantizer talk a lot (progress lines on stdout, FutureWarnings, warnings on
the root logger); ``quiet()`` keeps all of it from the user, who sees resnetkit's own lines only.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from .errors import UserError

INPUT, OUTPUT = "images", "logits"  # the names of the graph's input and output
_CHATTY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporter's and quantizer's progress prints, Python warnings and log records
    while inside; errors still propagate as exceptions."""
    root = logging.getLogger()
    saved = [(name, logging.getLogger(name).level) for name in _CHATTY_LOGGERS]
    root_level, null = root.level, logging.NullHandler()
    # A handler on the root logger stops ``logging.warning(...)`` from calling basicConfig,
    # which would otherwise install a stderr handler for the rest of the process.
    root.addHandler(null)
    root.setLevel(logging.ERROR)
    for name, _ in saved:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved:
            logging.getLogger(name).setLevel(level)
        root.setLevel(root_level)
        root.removeHandler(null)


def to_onnx(model: nn.Module, input_shape: tuple[int, int, int], *, batch_size: int = 1,
            dynamic_batch: bool = False, opset: int | None = None) -> onnx.ModelProto:
    """``model`` (eval mode, fp32, CPU) as an ONNX graph taking (batch, *input_shape) float32
    images named ``images`` and giving ``logits``. ``opset`` None: the exporter's default."""
    model = model.eval()
    # torch.export specialises a dimension of size 1; a symbolic batch needs an example of 2+.
    example = torch.randn(max(batch_size, 2) if dynamic_batch else batch_size, *input_shape)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    try:
        with quiet(), torch.no_grad():
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT],
                                        output_names=[OUTPUT], dynamic_shapes=shapes,
                                        opset_version=opset, verbose=False)
    except Exception as e:  # the exporter's many error types; a bad --opset is the usual cause
        raise UserError(f"ONNX export failed (opset {opset or 'default'}): {_first_line(e)}") from None
    proto = program.model_proto
    if dynamic_batch:  # name the symbolic dimension for readers of the file
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
        proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    return proto


def opset_of(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def set_metadata(proto: onnx.ModelProto, metadata: dict) -> onnx.ModelProto:
    """Replace the model's metadata_props by ``metadata``, each value JSON-encoded, so that any
    ONNX reader sees ``classes``, ``mean`` and ``std`` as plain JSON lists."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, json.dumps(value)
    return proto


def read_metadata(proto: onnx.ModelProto) -> dict:
    meta = {}
    for prop in proto.metadata_props:
        try:
            meta[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError:
            meta[prop.key] = prop.value
    return meta


def load(path: str | Path) -> onnx.ModelProto:
    """An ONNX file, or a one-line error saying that it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file not found: {path}")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: the file is not ONNX
        raise UserError(f"not an ONNX model: {path} ({_first_line(e)})") from None
    if not proto.graph.node or not proto.graph.input:
        raise UserError(f"not an ONNX model: {path} (no graph)")
    return proto


def input_shape(proto: onnx.ModelProto) -> list[int | None]:
    """The first graph input's shape; None for a symbolic dimension. Initializers listed as
    inputs (old exporters did that) are skipped."""
    weights = {t.name for t in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in weights)
    return [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]


def session(model: onnx.ModelProto | bytes | str, *, threads: int | None = None,
            profile_prefix: str | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session with every graph optimisation on: fp32 convolutions are
    rewritten to a blocked channel layout (NCHWc) and QDQ groups fused into integer kernels."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: the C++ side prints warnings straight to stderr
    if threads:
        opts.intra_op_num_threads = threads
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's Fail/InvalidGraph/NotImplemented
        raise UserError(f"onnxruntime cannot run this model: {_first_line(e)}") from None


class _Batches(CalibrationDataReader):
    """Feeds onnxruntime's calibrator one batch of normalised images at a time."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self.batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT: np.ascontiguousarray(batch, dtype=np.float32)}


def quantize_int8(fp32: onnx.ModelProto, batches: Iterable[np.ndarray], *,
                  reduce_range: bool) -> onnx.ModelProto:
    """Static QDQ int8 of an fp32 graph from ``to_onnx``, calibrated (min/max) on ``batches`` of
    normalised images. The graph must take any batch size (``dynamic_batch``) or exactly the
    calibration batch size."""
    with tempfile.TemporaryDirectory(prefix="resnetkit-int8-") as tmp:
        src, prepared, out = (str(Path(tmp) / n) for n in ("fp32.onnx", "prep.onnx", "int8.onnx"))
        onnx.save_model(fp32, src)
        try:
            with quiet():
                # Shape inference and graph clean-up first, as the quantizer asks: its ranges
                # then refer to the tensors that survive onnxruntime's own fusions.
                quant_pre_process(src, prepared, skip_symbolic_shape=False)
                quantize_static(
                    prepared, out, _Batches(batches), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        except UserError:
            raise
        except Exception as e:  # the quantizer's assertion and shape errors
            raise UserError(f"int8 quantization failed: {_first_line(e)}") from None
        return onnx.load_model(out)


def is_quantized(proto: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "QLinearConv", "ConvInteger") for n in proto.graph.node)


def run(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """Logits of one batch, with onnxruntime's errors about the input turned into one line."""
    name = sess.get_inputs()[0].name
    try:
        return sess.run(None, {name: x})[0]
    except Exception as e:  # InvalidArgument on shapes or types: the input does not fit
        raise UserError(f"onnxruntime rejected a batch of shape {tuple(x.shape)}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
