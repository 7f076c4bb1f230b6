"""Build the second bundled example model: a small MobileNet-style CNN for 8x8 digits.

Run from the repository root:  python resources/make_mobile.py

Like make_example.py, everything is offline and deterministic: the same scikit-learn digits,
the same train / calibration / test split (make_example.load_splits; the script checks that
the arrays equal digits_calib.npz and digits_test.npz), a plain-numpy network and a fixed seed.

The model exists for cross-layer equalization (CLE, Nagel et al. 2019, "Data-Free
Quantization Through Weight Equalization and Bias Correction"). It has what makes
MobileNetV2 hard to quantize with per-tensor weights: depthwise convolutions, each followed
by an unfolded BatchNormalization. Once BN is folded into the convolution
(W' = W * gamma / sqrt(var + eps)), the per-output-channel ranges of a depthwise layer become
very unequal, so one 8-bit scale per tensor rounds most channels to (almost) nothing, while
per-channel 8-bit weights keep float accuracy. The script measures this and prints it.

Training choices (ordinary for MobileNets; nothing is edited after training):
    - Conv without bias followed by BatchNormalization (batch statistics while training,
      running mean / unbiased running variance with momentum 0.1 and epsilon 1e-5 as in
      PyTorch), plain Relu (not Relu6, so equalization preserves the float function exactly).
    - Adam with cosine decay like make_example.py, but a high learning rate (5e-2 instead of
      2e-3). It leaves a few channels dead: after their BN and Relu they are zero for every
      image. The depthwise channel reading a dead channel then sees only zeros, so its BN
      running variance decays to ~0 while its weights stay where they were when the input died;
      folding multiplies them by gamma / sqrt(var + eps) ~ 300 gamma. That channel alone sets a
      per-tensor scale. How much per-tensor W8 loses depends on the run (same seed, 40 epochs):
      lr 3e-3 leaves no depthwise channel without input and per-tensor W8 loses nothing;
      lr 2e-2 and 3e-2 give one such channel (in dw3) and per-tensor test accuracy 0.10 and 0.75;
      lr 5e-2 gives one in each depthwise layer and 0.10 (chance).

Output, next to this script:
    digits_mobile.onnx  float32, opset 13 / IR 8, input "input" [batch,1,8,8] -> "logits" [batch,10]
and a "digits_mobile.onnx" section in README.md (replaced in place; the rest is kept).
"""

import pathlib
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_example import conv_bwd, conv_fwd, load_splits, softmax_xent  # noqa: E402

SEED = 0
EPOCHS = 40
BATCH = 32
LR = 5e-2  # high on purpose (make_example.py uses 2e-3): it leaves a few channels dead, see the docstring
BN_EPS = 1e-5
BN_MOMENTUM = 0.1
QBITS = 8

# (name, kind, in channels, out channels, stride); every entry is Conv (no bias) + BN + Relu.
LAYERS = [
    ("conv1", "conv", 1, 16, 1),
    ("dw1", "dw", 16, 16, 1),
    ("pw1", "pw", 16, 32, 1),
    ("dw2", "dw", 32, 32, 2),  # 8x8 -> 4x4
    ("pw2", "pw", 32, 64, 1),
    ("dw3", "dw", 64, 64, 1),
    ("pw3", "pw", 64, 64, 1),
]
N_CLASSES = 10


def bn_name(name):
    return "bn1" if name == "conv1" else f"{name}_bn"


def relu_name(name):
    return "relu1" if name == "conv1" else f"{name}_relu"


def weight_shape(kind, cin, cout):
    return {"conv": (cout, cin, 3, 3), "dw": (cout, 1, 3, 3), "pw": (cout, cin, 1, 1)}[kind]


# ---------------------------------------------------------------- layers (NCHW, float32)
def dw_fwd(x, w, stride):
    """Depthwise 3x3, pad 1: out[n,c] = sum_k w[c,0,k] * x[n,c] shifted; stride by subsampling."""
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros_like(x)
    for k in range(9):
        i, j = divmod(k, 3)
        out += w[None, :, 0, i, j, None, None] * xp[:, :, i:i + h, j:j + wd]
    return out[:, :, ::stride, ::stride], xp


def dw_bwd(dout, xp, w, stride):
    n, c, hp, wp = xp.shape
    h, wd = hp - 2, wp - 2
    dfull = np.zeros((n, c, h, wd), dout.dtype)
    dfull[:, :, ::stride, ::stride] = dout
    dw = np.zeros_like(w)
    dxp = np.zeros_like(xp)
    for k in range(9):
        i, j = divmod(k, 3)
        dw[:, 0, i, j] = np.einsum("nchw,nchw->c", dfull, xp[:, :, i:i + h, j:j + wd])
        dxp[:, :, i:i + h, j:j + wd] += w[None, :, 0, i, j, None, None] * dfull
    return dxp[:, :, 1:-1, 1:-1], dw


def pw_fwd(x, w):
    return np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x, optimize=True)


def pw_bwd(dout, x, w):
    dw = np.einsum("nohw,nchw->oc", dout, x, optimize=True)[:, :, None, None]
    dx = np.einsum("oc,nohw->nchw", w[:, :, 0, 0], dout, optimize=True)
    return dx, dw


def bn_train_fwd(x, gamma, beta):
    mu = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    inv = 1.0 / np.sqrt(var + BN_EPS)
    xhat = (x - mu[:, None, None]) * inv[:, None, None]
    return gamma[:, None, None] * xhat + beta[:, None, None], xhat, inv, mu, var


def bn_train_bwd(dy, xhat, inv, gamma):
    m = dy.shape[0] * dy.shape[2] * dy.shape[3]
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    dbeta = dy.sum(axis=(0, 2, 3))
    dxhat = dy * gamma[:, None, None]
    dx = (inv[:, None, None] / m) * (m * dxhat - dxhat.sum(axis=(0, 2, 3))[:, None, None]
                                     - xhat * (dxhat * xhat).sum(axis=(0, 2, 3))[:, None, None])
    return dx, dgamma, dbeta


# ---------------------------------------------------------------- model
def init_params(rng):
    p, stats = {}, {}
    for name, kind, cin, cout, _ in LAYERS:
        shape = weight_shape(kind, cin, cout)
        fan_in = int(np.prod(shape[1:]))
        p[f"{name}.weight"] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)  # He
        bn = bn_name(name)
        p[f"{bn}.scale"] = np.ones(cout, np.float32)
        p[f"{bn}.bias"] = np.zeros(cout, np.float32)
        stats[f"{bn}.mean"] = np.zeros(cout, np.float32)
        stats[f"{bn}.var"] = np.ones(cout, np.float32)
    cin = LAYERS[-1][3]
    p["fc.weight"] = (rng.standard_normal((N_CLASSES, cin)) * np.sqrt(1.0 / cin)).astype(np.float32)
    p["fc.bias"] = np.zeros(N_CLASSES, np.float32)
    return p, stats


def conv(kind, x, w, stride):
    """Forward of one convolution; returns the output and what its backward needs."""
    if kind == "conv":
        out, cols = conv_fwd(x, w, np.zeros(w.shape[0], np.float32))
        return out, cols
    if kind == "dw":
        return dw_fwd(x, w, stride)
    return pw_fwd(x, w), x


def conv_back(kind, d, saved, x_shape, w, stride):
    if kind == "conv":
        dx, dw, _ = conv_bwd(d, saved, x_shape, w)
        return dx, dw
    if kind == "dw":
        return dw_bwd(d, saved, w, stride)
    return pw_bwd(d, saved, w)


def forward_train(p, stats, x):
    """Training-mode forward (batch statistics); updates the running statistics in place."""
    cache, h = [], x
    for name, kind, _, _, stride in LAYERS:
        bn = bn_name(name)
        a, saved = conv(kind, h, p[f"{name}.weight"], stride)
        y, xhat, inv, mu, var = bn_train_fwd(a, p[f"{bn}.scale"], p[f"{bn}.bias"])
        m = a.shape[0] * a.shape[2] * a.shape[3]
        stats[f"{bn}.mean"] = ((1 - BN_MOMENTUM) * stats[f"{bn}.mean"] + BN_MOMENTUM * mu).astype(np.float32)
        stats[f"{bn}.var"] = ((1 - BN_MOMENTUM) * stats[f"{bn}.var"]
                              + BN_MOMENTUM * var * m / (m - 1)).astype(np.float32)
        cache.append((h.shape, saved, xhat, inv, y > 0))
        h = np.maximum(y, 0)
    f = h.mean(axis=(2, 3))
    logits = f @ p["fc.weight"].T + p["fc.bias"]
    return logits, (cache, f, h.shape)


def backward(p, c, dlogits):
    cache, f, h_shape = c
    g = {"fc.weight": dlogits.T @ f, "fc.bias": dlogits.sum(0)}
    d = dlogits @ p["fc.weight"]
    d = np.broadcast_to(d[:, :, None, None] / (h_shape[2] * h_shape[3]), h_shape)
    for (name, kind, _, _, stride), (x_shape, saved, xhat, inv, on) in zip(LAYERS[::-1], cache[::-1]):
        bn = bn_name(name)
        d, g[f"{bn}.scale"], g[f"{bn}.bias"] = bn_train_bwd(d * on, xhat, inv, p[f"{bn}.scale"])
        d, g[f"{name}.weight"] = conv_back(kind, d, saved, x_shape, p[f"{name}.weight"], stride)
    return g


def forward_eval(p, stats, x):
    """Inference-mode forward (running statistics), what the ONNX graph computes."""
    h = x
    for name, kind, _, _, stride in LAYERS:
        bn = bn_name(name)
        a, _ = conv(kind, h, p[f"{name}.weight"], stride)
        s = p[f"{bn}.scale"] / np.sqrt(stats[f"{bn}.var"] + BN_EPS)
        y = (a - stats[f"{bn}.mean"][:, None, None]) * s[:, None, None] + p[f"{bn}.bias"][:, None, None]
        h = np.maximum(y, 0)
    return h.mean(axis=(2, 3)) @ p["fc.weight"].T + p["fc.bias"]


def predict(p, stats, x):
    return np.concatenate([forward_eval(p, stats, x[i:i + 512]) for i in range(0, len(x), 512)])


def train(x, y, x_val, y_val, rng):
    p, stats = init_params(rng)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2, step = 0.9, 0.999, 0
    steps_total = EPOCHS * int(np.ceil(len(x) / BATCH))
    for epoch in range(EPOCHS):
        order = rng.permutation(len(x))
        losses = []
        for i in range(0, len(x), BATCH):
            idx = order[i:i + BATCH]
            logits, cache = forward_train(p, stats, x[idx])
            loss, dlogits = softmax_xent(logits, y[idx])
            grads = backward(p, cache, dlogits.astype(np.float32))
            step += 1
            lr = LR * 0.5 * (1 + np.cos(np.pi * step / steps_total))
            for k in p:
                gk = grads[k]
                m[k] = b1 * m[k] + (1 - b1) * gk
                v[k] = b2 * v[k] + (1 - b2) * gk ** 2
                mhat, vhat = m[k] / (1 - b1 ** step), v[k] / (1 - b2 ** step)
                p[k] = (p[k] - lr * mhat / (np.sqrt(vhat) + 1e-8)).astype(np.float32)
            losses.append(loss)
        if epoch % 5 == 4 or epoch == EPOCHS - 1:
            val_acc = (predict(p, stats, x_val).argmax(1) == y_val).mean()
            print(f"epoch {epoch + 1:3d}  loss {np.mean(losses):.4f}  calib acc {val_acc:.4f}")
    return p, stats


# ---------------------------------------------------------------- BN folding and 8-bit weights
def fold_bn(p, stats):
    """Fold every BatchNormalization into its Conv: W' = W * s, b' = (0 - mean) * s + beta."""
    folded = {}
    for name, _, _, _, _ in LAYERS:
        bn = bn_name(name)
        s = p[f"{bn}.scale"] / np.sqrt(stats[f"{bn}.var"] + BN_EPS)
        folded[f"{name}.weight"] = (p[f"{name}.weight"] * s[:, None, None, None]).astype(np.float32)
        folded[f"{name}.bias"] = (p[f"{bn}.bias"] - stats[f"{bn}.mean"] * s).astype(np.float32)
    folded["fc.weight"], folded["fc.bias"] = p["fc.weight"], p["fc.bias"]
    return folded


def quantize_weight(w, per_channel):
    """Symmetric signed 8-bit fake quantization (scale = max|W| / 127), per tensor or per output channel."""
    qmax = 2 ** (QBITS - 1) - 1
    axes = tuple(range(1, w.ndim)) if per_channel else None
    amax = np.abs(w).max(axis=axes, keepdims=True)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    return (np.clip(np.round(w / scale), -qmax, qmax) * scale).astype(np.float32)


def channel_range_ratio(w):
    r = np.abs(w).reshape(len(w), -1).max(1)
    return float(r.max() / r.min()) if r.min() > 0 else float("inf")


# ---------------------------------------------------------------- export
def conv_attrs(kind, cin, stride):
    if kind == "pw":
        return {"kernel_shape": [1, 1]}
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [stride, stride]}
    if kind == "dw":
        attrs["group"] = cin
    return attrs


def build_graph(weights, name, folded):
    """The network as an ONNX graph: Conv -> BatchNormalization -> Relu per layer (folded=False),
    or Conv with bias -> Relu (folded=True, the weights come from fold_bn)."""
    nodes, h = [], "input"
    for layer, kind, cin, _, stride in LAYERS:
        bn, relu = bn_name(layer), relu_name(layer)
        ins = [h, f"{layer}.weight"] + ([f"{layer}.bias"] if folded else [])
        nodes.append(helper.make_node("Conv", ins, [f"{layer}_out"], name=layer, **conv_attrs(kind, cin, stride)))
        h = f"{layer}_out"
        if not folded:
            bn_ins = [h] + [f"{bn}.{k}" for k in ("scale", "bias", "mean", "var")]
            nodes.append(helper.make_node("BatchNormalization", bn_ins, [f"{bn}_out"], name=bn,
                                          epsilon=BN_EPS, momentum=1 - BN_MOMENTUM))
            h = f"{bn}_out"
        nodes.append(helper.make_node("Relu", [h], [f"{relu}_out"], name=relu))
        h = f"{relu}_out"
    nodes += [
        helper.make_node("GlobalAveragePool", [h], ["gap_out"], name="gap"),
        helper.make_node("Flatten", ["gap_out"], ["flatten_out"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flatten_out", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(
        nodes, name,
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", N_CLASSES])],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items() if k in used],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="qinspect resources/make_mobile.py", producer_version="1")
    # onnx 1.23 defaults to IR 14, which onnxruntime 1.31 refuses; IR 8 is what opset 13 needs.
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def run_onnx(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def quantization_check(p, stats, x, y):
    """Fold BN, fake-quantize every Conv / Gemm weight to 8 bits (activations stay float), run in
    onnxruntime. Returns accuracies and, per depthwise layer, max / min of the per-channel max |W'|."""
    folded = fold_bn(p, stats)
    res = {"folded": float((run_onnx(build_graph(folded, "folded", True), x).argmax(1) == y).mean())}
    for key, per_channel in (("per_tensor", False), ("per_channel", True)):
        q = {k: quantize_weight(v, per_channel) if k.endswith(".weight") else v for k, v in folded.items()}
        res[key] = float((run_onnx(build_graph(q, key, True), x).argmax(1) == y).mean())
    res["ratios"] = {name: channel_range_ratio(folded[f"{name}.weight"]) for name, kind, *_ in LAYERS if kind == "dw"}
    res["dead"] = {name: int((stats[f"{bn_name(name)}.var"] < 1e-6).sum()) for name, kind, *_ in LAYERS if kind == "dw"}
    return res


def architecture(sep=" ; "):
    parts = []
    for name, kind, cin, cout, stride in LAYERS:
        what = {"conv": f"conv3x3 {cin}->{cout}", "dw": f"depthwise3x3 {cin}" + (" stride 2" if stride == 2 else ""),
                "pw": f"pointwise1x1 {cin}->{cout}"}[kind]
        parts.append(f"{name} {what}")
    return sep.join(parts + [f"GlobalAveragePool{sep}Flatten{sep}fc Gemm {LAYERS[-1][3]}->{N_CLASSES}"])


def main():
    t0 = time.perf_counter()
    rng = np.random.default_rng(SEED)
    (x_tr, y_tr), (x_cal, y_cal), (x_te, y_te) = load_splits()
    # The splits must be the bundled ones, so both example models are scored on the same images.
    for fname, x, y in (("digits_calib.npz", x_cal, y_cal), ("digits_test.npz", x_te, y_te)):
        with np.load(HERE / fname) as f:
            assert np.array_equal(f["input"], x) and np.array_equal(f["labels"], y), fname
    print(f"train {len(x_tr)}  calib {len(x_cal)}  test {len(x_te)}  (calib / test equal the bundled .npz files)")

    p, stats = train(x_tr, y_tr, x_cal, y_cal, rng)
    t_train = time.perf_counter() - t0
    ref = predict(p, stats, x_te)
    acc = float((ref.argmax(1) == y_te).mean())

    q = quantization_check(p, stats, x_te, y_te)
    doc = (f"MobileNet-style CNN for 8x8 handwritten digits (10 classes), a qinspect example model for "
           f"cross-layer equalization: {architecture()}. Trained in plain numpy by resources/make_mobile.py "
           f"(seed {SEED}, Adam lr {LR:g} with cosine decay, {EPOCHS} epochs, BN epsilon {BN_EPS:g}) on "
           f"{len(x_tr)} images of scikit-learn's load_digits(), pixels scaled to [0, 1]. Test accuracy "
           f"{acc:.4f} on the {len(x_te)} images in digits_test.npz. With BatchNormalization folded and 8-bit "
           f"symmetric weights (float activations): per-tensor {q['per_tensor']:.4f}, per-channel "
           f"{q['per_channel']:.4f}.")
    model = build_graph({**p, **stats}, "digits_mobile", folded=False)
    model.doc_string = doc
    path = HERE / "digits_mobile.onnx"
    onnx.save(model, path)

    # The exported graph must compute exactly what was trained.
    out = run_onnx(onnx.load(path), x_te)
    diff = float(np.abs(out - ref).max())
    print(f"onnxruntime vs numpy max |diff| = {diff:.2e}")
    assert diff < 1e-4, diff
    assert float((out.argmax(1) == y_te).mean()) == acc

    print(f"\nfloat test accuracy              {acc:.4f}")
    print(f"BN folded, float weights         {q['folded']:.4f}")
    print(f"BN folded, W8 per tensor         {q['per_tensor']:.4f}")
    print(f"BN folded, W8 per output channel {q['per_channel']:.4f}")
    for name, ratio in q["ratios"].items():
        print(f"  {name}: per-channel max|W'| max/min = {ratio:8.1f}   channels with BN running var < 1e-6: "
              f"{q['dead'][name]}")
    print(f"model {path.stat().st_size} bytes   training {t_train:.1f}s   total {time.perf_counter() - t0:.1f}s")

    update_readme(acc, q, len(x_tr))


README_HEADING = "## `digits_mobile.onnx`"
README_SECTION = """\
{heading}

Generated by `python resources/make_mobile.py` (offline, deterministic; run it after
`make_example.py`, which rewrites this file without this section).

A MobileNet-style float32 CNN (opset 13, IR 8, `input` [batch, 1, 8, 8] -> `logits` [batch, 10])
for testing cross-layer equalization (Nagel et al. 2019):

    {arch}

Every Conv (conv1, dw*, pw*) has no bias and is followed by an unfolded BatchNormalization
(inference mode, running mean / variance, epsilon {eps:g}) and a plain Relu; depthwise = Conv
with `group` = channels, weight [C, 1, 3, 3]. Trained in plain numpy on the same {n_tr}
training images as `digits_cnn.onnx` (same calibration and test splits), seed {seed}, Adam with
cosine decay, {epochs} epochs.

Float test accuracy: {acc:.4f}. With every BatchNormalization folded into its Conv and all
Conv / Gemm weights quantized to 8 bits symmetric (activations float), test accuracy is
{pt:.4f} with one scale per tensor and {pc:.4f} with one scale per output channel. The folded
depthwise layers' per-channel weight ranges (max / min of max |W'|) are {ratios}
(measured by the script, which prints them).

Why: the learning rate ({lr:g}, 25x the one of `make_example.py`) leaves a few channels dead
during training - after their BN and Relu they are zero for every image. A depthwise channel
that reads a dead channel ({dead}) sees only zeros, so its BN running
variance decays to ~0 while its weights stay where they were when the input died, and folding
multiplies them by gamma / sqrt(var + eps) ~ 300 gamma. That one channel sets the per-tensor
scale and the other channels round to (nearly) zero, as Nagel et al. report for MobileNetV2.
Its input is always zero, so the float function does not depend on those weights; nothing is
edited after training.

To regenerate: `python resources/make_mobile.py` (needs numpy, onnx, onnxruntime, scikit-learn).
"""


def update_readme(acc, q, n_tr):
    ratios = ", ".join(f"{k} {v:.0f}" for k, v in q["ratios"].items())
    section = README_SECTION.format(heading=README_HEADING, arch=architecture("\n    "), eps=BN_EPS, n_tr=n_tr, seed=SEED,
                                    epochs=EPOCHS, acc=acc, pt=q["per_tensor"], pc=q["per_channel"], ratios=ratios,
                                    lr=LR, dead=", ".join(f"{q['dead'][k]} in {k}" for k in q["dead"]))
    path = HERE / "README.md"
    text = path.read_text()
    if README_HEADING in text:  # replace our section (it runs to the next "## " heading or the end)
        start = text.index(README_HEADING)
        nxt = text.find("\n## ", start + len(README_HEADING))
        text = text[:start] + section + (text[nxt + 1:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    main()
