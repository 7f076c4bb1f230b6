"""Benchmark models, generated here (no downloads) with random but well-scaled weights.

All three use opset 13 and IR version 8 (onnx 1.23's defaults, IR 14 / opset 28, are refused by
onnxruntime 1.31) and a dynamic batch axis "N", so calibration runs in batches.

- ``resnet``: a ResNet-style CNN at 224x224: 7x7/2 stem + max pool, four stages of basic blocks
  (3x3 Conv+Relu, 3x3 Conv, 1x1/2 projection shortcut where the shape changes, Add, Relu), global
  average pool, Gemm to 1000 classes. Batch norm is folded (Conv with bias), as in deployed models.
  He-initialised convs; the second conv of each block is scaled by 1/2 so residual sums stay O(1).
- ``mobilenet``: a MobileNetV2-style CNN at 224x224: inverted residual blocks (1x1 expand + Relu6,
  3x3 depthwise + Relu6, 1x1 linear projection, Add when shapes allow), Relu6 as Clip(0, 6), width
  multiplier and per-stage repeats configurable.
- ``transformer``: a BERT-style encoder (post-LN): 4 layers, width 256, 4 heads, FFN 1024,
  sequence 128, fed float embeddings [N, 128, 256]. Attention is MatMul/Softmax, GELU is the Erf
  decomposition and LayerNorm is its opset-13 decomposition (ReduceMean, Sub, Mul, Sqrt, Div, ...),
  as torch exports them below opset 17. Weights ~ N(0, 1/fan_in), LayerNorm gamma 1 and beta 0.
- ``detector``: a YOLOv8-style detector: Conv+SiLU (Sigmoid, Mul) backbone with C2f blocks (Split,
  bottlenecks with residual Add, Concat), an FPN/PAN neck (Resize, Concat, stride-2 convs), a
  decoupled head at strides 8/16/32 and YOLOv8's decode: DFL (Softmax over 16 bins, then a 1x1 Conv
  with weights 0..15), the anchor grid (x1y1 = anchor - lt, x2y2 = anchor + rb: the Sub and Add
  whose outputs span the whole image), xywh (centre and x2y2 - x1y1) times the strides, and sigmoid
  class scores. Two outputs, ``boxes`` [N, 4, A] in pixels and ``scores`` [N, classes, A], as
  NMS-ready exports give them.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, value: np.ndarray, prefix: str) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], prefix: str | None = None, **attrs) -> str:
        out = self.name(prefix or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out + "_node", **attrs))
        return out

    def model(self, name: str, inputs, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="qinspect-bench")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        return model

    # -- CNN pieces --------------------------------------------------------------------------------
    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1,
             gain: float = 1.0, act: str | None = None) -> str:
        fan_in = cin // group * k * k
        w = self.rng.standard_normal((cout, cin // group, k, k)) * (gain * math.sqrt(2.0 / fan_in))
        b = self.rng.standard_normal(cout) * 0.05
        y = self.node("Conv", [x, self.const(w.astype(np.float32), "w"), self.const(b.astype(np.float32), "b")],
                      "conv", kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=group)
        if act == "relu":
            y = self.node("Relu", [y], "relu")
        elif act == "relu6":
            y = self.node("Clip", [y, self._zero, self._six], "relu6")
        return y

    def relu6_consts(self) -> None:
        self._zero = self.const(np.array(0.0, np.float32), "zero")
        self._six = self.const(np.array(6.0, np.float32), "six")

    def head(self, x: str, cin: int, classes: int) -> str:
        x = self.node("GlobalAveragePool", [x], "gap")
        x = self.node("Flatten", [x], "flatten", axis=1)
        w = self.rng.standard_normal((classes, cin)) * math.sqrt(1.0 / cin)
        b = np.zeros(classes)
        return self.node("Gemm", [x, self.const(w.astype(np.float32), "fc_w"), self.const(b.astype(np.float32), "fc_b")],
                         "logits", transB=1)

    # -- transformer pieces ------------------------------------------------------------------------
    def linear(self, x: str, cin: int, cout: int) -> str:
        w = self.rng.standard_normal((cin, cout)) * math.sqrt(1.0 / cin)
        b = self.rng.standard_normal(cout) * 0.02
        y = self.node("MatMul", [x, self.const(w.astype(np.float32), "w")], "matmul")
        return self.node("Add", [y, self.const(b.astype(np.float32), "b")], "linear")

    def layer_norm(self, x: str, width: int) -> str:
        mean = self.node("ReduceMean", [x], "ln_mean", axes=[-1], keepdims=1)
        d = self.node("Sub", [x, mean], "ln_sub")
        sq = self.node("Mul", [d, d], "ln_sq")
        var = self.node("ReduceMean", [sq], "ln_var", axes=[-1], keepdims=1)
        ve = self.node("Add", [var, self.const(np.array(1e-5, np.float32), "eps")], "ln_add_eps")
        sd = self.node("Sqrt", [ve], "ln_sqrt")
        n = self.node("Div", [d, sd], "ln_norm")
        g = self.node("Mul", [n, self.const(np.ones(width, np.float32), "ln_gamma")], "ln_scale")
        return self.node("Add", [g, self.const(np.zeros(width, np.float32), "ln_beta")], "ln_out")

    def gelu(self, x: str) -> str:
        a = self.node("Div", [x, self.const(np.array(math.sqrt(2.0), np.float32), "sqrt2")], "gelu_div")
        e = self.node("Erf", [a], "gelu_erf")
        p = self.node("Add", [e, self.const(np.array(1.0, np.float32), "one")], "gelu_add")
        m = self.node("Mul", [x, p], "gelu_mul")
        return self.node("Mul", [m, self.const(np.array(0.5, np.float32), "half")], "gelu")


def resnet(widths=(32, 64, 128, 256), blocks=(1, 1, 1, 1), size: int = 224, classes: int = 1000,
           seed: int = 0) -> onnx.ModelProto:
    b = _Builder(seed)
    x = b.conv("input", 3, widths[0], 7, stride=2, act="relu")
    x = b.node("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = widths[0]
    for stage, (width, count) in enumerate(zip(widths, blocks)):
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            y = b.conv(x, cin, width, 3, stride=stride, act="relu")
            y = b.conv(y, width, width, 3, gain=0.5)
            short = x if stride == 1 and cin == width else b.conv(x, cin, width, 1, stride=stride)
            x = b.node("Relu", [b.node("Add", [y, short], "residual")], "relu")
            cin = width
    out = b.head(x, cin, classes)
    return b.model(
        "bench_resnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", classes])],
    )


# MobileNetV2's (expansion t, channels c, repeats n, stride s) per stage.
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _divisible(v: float, d: int = 8) -> int:
    return max(d, int(v + d / 2) // d * d)


def mobilenet(width: float = 0.5, repeats: int | None = None, size: int = 224, classes: int = 1000,
              seed: int = 1) -> onnx.ModelProto:
    """MobileNetV2 with a width multiplier; `repeats` caps the blocks per stage (None: the paper's)."""
    b = _Builder(seed)
    b.relu6_consts()
    cin = _divisible(32 * width)
    x = b.conv("input", 3, cin, 3, stride=2, act="relu6")
    for t, c, n, s in MOBILENET_V2:
        cout = _divisible(c * width)
        for i in range(n if repeats is None else min(n, repeats)):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = b.conv(x, cin, hidden, 1, act="relu6") if t != 1 else x
            y = b.conv(y, hidden, hidden, 3, stride=stride, group=hidden, act="relu6")
            y = b.conv(y, hidden, cout, 1, gain=0.5 if stride == 1 and cin == cout else 1.0)
            x = b.node("Add", [x, y], "residual") if stride == 1 and cin == cout else y
            cin = cout
    last = max(1280, _divisible(1280 * width))
    x = b.conv(x, cin, last, 1, act="relu6")
    out = b.head(x, last, classes)
    return b.model(
        "bench_mobilenet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", classes])],
    )


def transformer(layers: int = 4, width: int = 256, heads: int = 4, seq: int = 128, ffn: int | None = None,
                seed: int = 2) -> onnx.ModelProto:
    b = _Builder(seed)
    ffn = ffn or 4 * width
    head = width // heads
    split = b.const(np.array([0, 0, heads, head], np.int64), "split_shape")
    merge = b.const(np.array([0, 0, width], np.int64), "merge_shape")
    scale = b.const(np.array(1.0 / math.sqrt(head), np.float32), "attn_scale")
    x = "input"
    for _ in range(layers):
        def heads_of(t, perm):
            return b.node("Transpose", [b.node("Reshape", [t, split], "split")], "heads", perm=perm)
        q = heads_of(b.linear(x, width, width), [0, 2, 1, 3])   # [N, h, S, d]
        k = heads_of(b.linear(x, width, width), [0, 2, 3, 1])   # [N, h, d, S]
        v = heads_of(b.linear(x, width, width), [0, 2, 1, 3])
        scores = b.node("Mul", [b.node("MatMul", [q, k], "qk"), scale], "scores")
        probs = b.node("Softmax", [scores], "probs", axis=-1)
        ctx = b.node("MatMul", [probs, v], "context")
        ctx = b.node("Reshape", [b.node("Transpose", [ctx], "merge_t", perm=[0, 2, 1, 3]), merge], "merge")
        x = b.layer_norm(b.node("Add", [x, b.linear(ctx, width, width)], "attn_residual"), width)
        h = b.linear(b.gelu(b.linear(x, width, ffn)), ffn, width)
        x = b.layer_norm(b.node("Add", [x, h], "ffn_residual"), width)
    return b.model(
        "bench_transformer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", seq, width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", seq, width])],
    )


def _silu(b: _Builder, x: str) -> str:
    return b.node("Mul", [x, b.node("Sigmoid", [x], "sigmoid")], "silu")


def _conv_silu(b: _Builder, x: str, cin: int, cout: int, k: int = 3, stride: int = 1) -> str:
    return _silu(b, b.conv(x, cin, cout, k, stride=stride))


def _c2f(b: _Builder, x: str, cin: int, cout: int, blocks: int = 1) -> str:
    half = cout // 2
    y = _conv_silu(b, x, cin, cout, 1)
    parts = [b.name("c2f_a"), b.name("c2f_b")]
    b.nodes.append(helper.make_node("Split", [y], parts, name=parts[0] + "_split", axis=1))
    z = parts[1]
    for _ in range(blocks):
        t = _conv_silu(b, _conv_silu(b, z, half, half), half, half)
        z = b.node("Add", [z, t], "c2f_residual")
        parts.append(z)
    return _conv_silu(b, b.node("Concat", parts, "c2f_concat", axis=1), half * len(parts), cout, 1)


def _anchors(size: int, strides) -> tuple[np.ndarray, np.ndarray]:
    points, scale = [], []
    for s in strides:
        n = size // s
        ys, xs = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5, indexing="ij")
        points.append(np.stack([xs.reshape(-1), ys.reshape(-1)]))
        scale.append(np.full(n * n, float(s)))
    return np.concatenate(points, axis=1)[None].astype(np.float32), np.concatenate(scale)[None, None].astype(np.float32)


def detector(width: int = 16, size: int = 320, classes: int = 20, blocks: int = 1, box_gain: float = 6.0,
             cls_gain: float = 4.0, neck: bool = True, seed: int = 3) -> onnx.ModelProto:
    """YOLOv8-style (see the module doc); `width` is the stem's channels (YOLOv8n: 16). Without
    `neck`, three plain strided convs feed the head (a few layers deep: for tests)."""
    b = _Builder(seed)
    w = [width, 2 * width, 4 * width, 8 * width, 16 * width]
    if neck:
        x = _conv_silu(b, "input", 3, w[0], 3, 2)                         # /2
        x = _c2f(b, _conv_silu(b, x, w[0], w[1], 3, 2), w[1], w[1], blocks)  # /4
        p3 = _c2f(b, _conv_silu(b, x, w[1], w[2], 3, 2), w[2], w[2], blocks)  # /8
        p4 = _c2f(b, _conv_silu(b, p3, w[2], w[3], 3, 2), w[3], w[3], blocks)  # /16
        p5 = _c2f(b, _conv_silu(b, p4, w[3], w[4], 3, 2), w[4], w[4], blocks)  # /32
        up = b.const(np.array([1, 1, 2, 2], np.float32), "up_scales")
        roi = b.const(np.zeros(0, np.float32), "roi")

        def upsample(t):
            return b.node("Resize", [t, roi, up], "upsample", mode="nearest")

        n4 = _c2f(b, b.node("Concat", [upsample(p5), p4], "neck_concat", axis=1), w[4] + w[3], w[3], blocks)
        n3 = _c2f(b, b.node("Concat", [upsample(n4), p3], "neck_concat", axis=1), w[3] + w[2], w[2], blocks)
        d4 = _c2f(b, b.node("Concat", [_conv_silu(b, n3, w[2], w[2], 3, 2), n4], "neck_concat", axis=1),
                  w[2] + w[3], w[3], blocks)
        d5 = _c2f(b, b.node("Concat", [_conv_silu(b, d4, w[3], w[3], 3, 2), p5], "neck_concat", axis=1),
                  w[3] + w[4], w[4], blocks)
    else:  # the head and decode on three strided convs: where a detector's own 8-bit trouble shows alone
        n3 = _conv_silu(b, b.node("AveragePool", ["input"], "stem", kernel_shape=[8, 8], strides=[8, 8]), 3, w[2], 3)
        d4 = _conv_silu(b, n3, w[2], w[3], 3, 2)
        d5 = _conv_silu(b, d4, w[3], w[4], 3, 2)
    bins, mid = 16, max(16, w[2] // 4)
    heads, gains, class_biases = [], {}, []
    for feat, c in ((n3, w[2]), (d4, w[3]), (d5, w[4])):
        box = _conv_silu(b, _conv_silu(b, feat, c, mid), mid, mid)
        box = b.conv(box, mid, 4 * bins, 1)
        gains[box] = box_gain
        cls = _conv_silu(b, _conv_silu(b, feat, c, mid), mid, mid)
        cls = b.conv(cls, mid, classes, 1)
        gains[cls] = cls_gain
        class_biases.append(b.nodes[-1].input[2])
        both = b.node("Concat", [box, cls], "head_concat", axis=1)
        heads.append(b.node("Reshape", [both, b.const(np.array([0, 4 * bins + classes, -1], np.int64), "shape")], "head_flat"))
    out = b.node("Concat", heads, "heads_concat", axis=2)              # [N, 64 + C, A]
    dist, cls = b.name("dfl_in"), b.name("cls_logits")
    b.nodes.append(helper.make_node("Split", [out, b.const(np.array([4 * bins, classes], np.int64), "split")],
                                    [dist, cls], name=dist + "_split", axis=1))
    # DFL: a distribution over 16 bins per side, its expectation by a 1x1 Conv with weights 0..15
    d = b.node("Reshape", [dist, b.const(np.array([0, 4, bins, -1], np.int64), "shape")], "dfl_reshape")
    d = b.node("Softmax", [b.node("Transpose", [d], "dfl_t", perm=[0, 2, 1, 3])], "dfl_softmax", axis=1)
    proj = b.const(np.arange(bins, dtype=np.float32).reshape(1, bins, 1, 1), "dfl_w")
    d = b.node("Reshape", [b.node("Conv", [d, proj], "dfl_conv", kernel_shape=[1, 1]),
                           b.const(np.array([0, 4, -1], np.int64), "shape")], "dfl")   # [N, 4, A]
    lt, rb = b.name("lt"), b.name("rb")
    b.nodes.append(helper.make_node("Split", [d, b.const(np.array([2, 2], np.int64), "split")], [lt, rb],
                                    name=lt + "_split", axis=1))
    points, scale = _anchors(size, (8, 16, 32))
    grid = b.const(points, "anchor_points")
    x1y1 = b.node("Sub", [grid, lt], "anchor_sub")
    x2y2 = b.node("Add", [grid, rb], "anchor_add")                     # the anchor-grid Add
    centre = b.node("Div", [b.node("Add", [x1y1, x2y2], "centre_sum"), b.const(np.array(2.0, np.float32), "two")], "centre")
    wh = b.node("Sub", [x2y2, x1y1], "wh")
    xywh = b.node("Concat", [centre, wh], "xywh", axis=1)
    boxes = b.node("Mul", [xywh, b.const(scale, "strides")], "boxes")
    scores = b.node("Sigmoid", [cls], "scores")
    for old, new in ((boxes, "boxes"), (scores, "scores")):
        for node in b.nodes:
            node.output[:] = [new if o == old else o for o in node.output]
    anchors = points.shape[-1]
    model = b.model(
        "bench_detector",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 4, anchors]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes, anchors])],
    )
    targets = {n.output[0]: gains.get(n.output[0], 1.0) for n in b.nodes if n.op_type == "Conv" and n.input[1] != proj}
    _normalise(model, targets, size, b.rng)
    for t in model.graph.initializer:  # class biases start low, as YOLOv8 sets them: most anchors see background
        if t.name in class_biases:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) - 4.0, t.name))
    return model


def _normalise(model: onnx.ModelProto, targets: dict[str, float], size: int, rng) -> None:
    """Scale each Conv's weights and bias, in graph order, so its output's standard deviation on
    random images is its target (1, or the head's gains): random He weights through SiLU, residual
    Adds and Concats would otherwise shrink or blow up the activations exponentially with depth.
    One session; the weights are fed, so each Conv costs one run."""
    import onnxruntime as ort

    inits = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.output[0] in targets]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    params = [name for n in convs for name in n.input[1:3]]
    probe.graph.input.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(inits[name].dims)) for name in params)
    probe.graph.output.extend(helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None) for n in convs)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the fed initializers are meant: no warning for each
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = {name: numpy_helper.to_array(inits[name]) for name in params}
    x = rng.random((2, 3, size, size), dtype=np.float32)
    for n in convs:
        y = session.run([n.output[0]], {"input": x, **values})[0]
        factor = np.float32(targets[n.output[0]] / max(float(y.std()), 1e-6))
        for name in n.input[1:3]:
            values[name] = values[name] * factor
    for name, v in values.items():
        inits[name].CopyFrom(numpy_helper.from_array(v.astype(np.float32), name))


BUILDERS = {"resnet": resnet, "mobilenet": mobilenet, "transformer": transformer, "detector": detector}


def build(kind: str, path: str, **options) -> dict:
    """Write model `kind` to `path`; returns a short description (parameters, nodes)."""
    model = BUILDERS[kind](**options)
    onnx.save_model(model, path)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    return {"model": kind, "path": path, "parameters": params, "nodes": len(model.graph.node), "options": options}
