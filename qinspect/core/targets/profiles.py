"""Target profiles: what one device or runtime does with a quantized model, as data.

A profile says where quantizers go (`placement`, BatchNormalization folded), which dtypes and
bitwidths each kind of tensor (and, narrower, each op) supports, which ops take per-tensor weights
only, the output encodings a target fixes, whether bias encodings are written, the weight grid
where integer kernels would saturate, which ops keep output, weight and bias float together, and
whether every integer scale must be a power of two (with the rounding used when the plan sets none).
`rules.py` applies a profile to a plan; a new target is a new entry in `TARGETS` plus a test.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import QInspectError
from ..graph.placement import Placement

INT, FLOAT = "int", "float"
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def _pairs(ints=(), floats=()) -> frozenset:
    return frozenset({(INT, b) for b in ints} | {(FLOAT, b) for b in floats})


@dataclass(frozen=True)
class WeightGrid:
    """Weights of `ops` at `weight_bw` bits use a `grid_bw`-bit grid (same storage type) when the
    op's input is an integer of `input_bw` bits and the weight is signed (symmetric); depthwise
    Convs are exempt when `exempt_depthwise` (their kernels widen before they multiply)."""

    ops: frozenset
    input_bw: int
    weight_bw: int
    grid_bw: int
    why: str
    exempt_depthwise: bool = True


@dataclass(frozen=True)
class FixedOutput:
    """The encoding a target fixes for an op's output at one bitwidth, asymmetric (unsigned storage)
    or symmetric (signed); scale and offset as in AIMET: real = (q + offset) * scale."""

    op: str
    bw: int
    symmetric: bool
    scale: float
    offset: int


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    summary: str                       # one line, for --help and the window
    output: str                        # the artefact users deploy: "overrides" or "qdq"
    supports: dict                     # kind -> frozenset of (dtype, bitwidth)
    op_supports: dict = field(default_factory=dict)  # (op, kind) -> narrower frozenset
    placement: Placement = Placement()
    fold_batchnorm: bool = True
    per_tensor_ops: frozenset = frozenset()  # ops whose weights are per tensor only
    fixed_outputs: tuple = ()          # FixedOutput entries: exact encodings
    fixed_ranges: dict = field(default_factory=dict)  # op -> (min, max) its output encoding always covers
    bias_encodings: bool = True        # written in overrides files unless a bias is edited
    weight_grid: WeightGrid | None = None
    float_groups: frozenset = frozenset()  # ops whose output, weight and bias are float together
    no_support_why: dict = field(default_factory=dict)  # (kind, dtype, bw) -> why, for messages
    pow2: str | None = None            # power-of-two scales required: the rounding when the plan sets none
    pow2_why: str = ""

    def supported(self, kind: str, op: str) -> frozenset:
        return self.op_supports.get((op, kind), self.supports[kind])

    def fixed_output(self, op: str, bw: int, symmetric: bool = False) -> FixedOutput | None:
        return next((f for f in self.fixed_outputs if (f.op, f.bw, f.symmetric) == (op, bw, symmetric)), None)


# QNN requires these 16-bit Sigmoid and Tanh output encodings (the QNN execution provider checks them;
# onnxruntime's get_qnn_qdq_config sets them): [0, 1) and [-1, 1) on the 16-bit grid. At other
# bitwidths AIMET's HTP configurations (v73 and later) fix the ranges below instead
# ("encoding_constraints"; a range symmetric about 0 makes the quantizer symmetric).
QNN_FIXED_OUTPUTS = (
    FixedOutput("Sigmoid", 16, False, 1 / 65536, 0),
    FixedOutput("Sigmoid", 16, True, 1 / 32768, -32768),
    FixedOutput("Tanh", 16, False, 1 / 32768, -32768),
    FixedOutput("Tanh", 16, True, 1 / 32768, -32768),
)
HTP_FIXED_RANGES = {"Sigmoid": (0.0, 1.0), "Softmax": (0.0, 1.0), "Tanh": (-1.0, 1.0)}


QNN_HTP = Target(
    name="qnn-htp",
    title="Qualcomm QNN HTP (AIMET's default HTP configuration)",
    summary="overrides JSON for the QNN converter: bias encodings derived by the converter, QNN's float rule for "
            "Conv/Gemm/MatMul",
    output="overrides",
    supports={
        "activation": _pairs(ints=(8, 16), floats=(16, 32)),
        "weight": _pairs(ints=(4, 8, 16), floats=(16, 32)),
        "bias": _pairs(ints=(8, 32), floats=(16, 32)),
    },
    bias_encodings=False,
    float_groups=WEIGHTED_OPS,
    fixed_outputs=QNN_FIXED_OUTPUTS,
    fixed_ranges=HTP_FIXED_RANGES,
    no_support_why={
        ("activation", INT, 4): "the HTP runs 8- and 16-bit activations",
        ("activation", INT, 32): "the HTP runs 8- and 16-bit activations",
        ("weight", INT, 32): "the HTP takes 4-, 8- and 16-bit weights",
        ("bias", INT, 16): "the QNN converter takes 8- or 32-bit biases",
        ("bias", INT, 4): "the QNN converter takes 8- or 32-bit biases",
    },
)

ORT_CPU = Target(
    name="ort-cpu",
    title="onnxruntime, CPU execution provider",
    summary="QDQ model for onnxruntime's CPU provider, accurate with and without VNNI (7-bit grid for 8-bit "
            "weights of integer kernels)",
    output="qdq",
    supports={
        "activation": _pairs(ints=(8, 16), floats=(16, 32)),
        "weight": _pairs(ints=(4, 8, 16), floats=(16, 32)),
        "bias": _pairs(ints=(8, 16, 32), floats=(16, 32)),
    },
    # onnxruntime fuses 8-bit Conv, Gemm and MatMul into integer kernels (not ConvTranspose, not 16-bit)
    weight_grid=WeightGrid(
        ops=frozenset({"Conv", "Gemm", "MatMul"}), input_bw=8, weight_bw=8, grid_bw=7,
        why="onnxruntime's u8s8 integer kernels add pairs of products in 16 bits, which saturate on x86 CPUs "
            "without VNNI unless weights stay within +-64"),
    no_support_why={
        ("activation", INT, 4): "onnxruntime's CPU provider has no 4-bit activation kernels, and a default "
                                "session refuses a Conv that reads one",
        ("activation", INT, 32): "ONNX has no 32-bit QuantizeLinear for activations",
        ("weight", INT, 32): "ONNX has no 32-bit weights for these ops",
    },
)

# The DPU multiplies by shifting: every scale a power of two, zero point 0, one scale per tensor, weights
# and biases at 8 bits as activations (Vitis AI UG1414: "power-of-2 scales, symmetry, per-tensor
# quantizers"; its quantizer's "non-overflow" method is our ceil rounding, the default here).
VITIS_DPU = Target(
    name="vitis-dpu",
    title="AMD Vitis AI DPU (power-of-two scales)",
    summary="QDQ model for the Vitis AI DPU flow: 8-bit symmetric per-tensor encodings whose scales are powers "
            "of two, biases included",
    output="qdq",
    supports={
        "activation": _pairs(ints=(8,)),
        "weight": _pairs(ints=(8,)),
        "bias": _pairs(ints=(8,)),
    },
    per_tensor_ops=WEIGHTED_OPS,
    pow2="ceil",
    pow2_why="the DPU multiplies by shifting, so scales are powers of two with zero point 0, one per tensor",
    no_support_why={
        ("activation", INT, 16): "the DPU runs 8-bit tensors only",
        ("weight", INT, 4): "the DPU runs 8-bit weights only",
        ("weight", INT, 16): "the DPU runs 8-bit weights only",
        ("bias", INT, 32): "the DPU adds 8-bit biases with a power-of-two scale",
        ("activation", FLOAT, 16): "the DPU has no floating point",
        ("activation", FLOAT, 32): "the DPU has no floating point",
        ("weight", FLOAT, 16): "the DPU has no floating point",
        ("weight", FLOAT, 32): "the DPU has no floating point",
        ("bias", FLOAT, 16): "the DPU has no floating point",
        ("bias", FLOAT, 32): "the DPU has no floating point",
    },
)

TARGETS = {t.name: t for t in (QNN_HTP, ORT_CPU, VITIS_DPU)}
DEFAULT_TARGET = QNN_HTP.name


def get_target(name: str | Target | None) -> Target:
    """The profile called `name` (the default when None); a one-line error lists the known ones."""
    if isinstance(name, Target):
        return name
    if name is None:
        return TARGETS[DEFAULT_TARGET]
    target = TARGETS.get(name)
    if target is None:
        raise QInspectError(f"unknown target {name!r}: choose one of {', '.join(TARGETS)}")
    return target
