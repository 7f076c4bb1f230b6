"""Build the bundled example model: a small CNN trained on real 8x8 handwritten digits.

Run from the repository root:  python resources/make_example.py

Everything is offline and deterministic: the data is scikit-learn's bundled copy of the
UCI optical-recognition digits (no download), and the network is trained in plain numpy
(no torch) with a fixed seed. Outputs, all next to this script:

    digits_cnn.onnx     float32 model, opset 13 / IR 8, input "input" [batch,1,8,8] -> "logits" [batch,10]
    digits_calib.npz    calibration split: input float32 [200,1,8,8], labels int64 [200]
    digits_test.npz     test split:        input float32 [297,1,8,8], labels int64 [297]
    README.md           what the files are and how they were made
"""

import pathlib
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 0
EPOCHS = 30
BATCH = 32
LR = 2e-3
HERE = pathlib.Path(__file__).resolve().parent


# ---------------------------------------------------------------- data
def load_splits():
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # pixels are 0..16 -> [0, 1], NCHW
    y = digits.target.astype(np.int64)
    # Stratified so every split has all ten classes in roughly equal numbers.
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=297, stratify=y, random_state=SEED)
    x_train, x_cal, y_train, y_cal = train_test_split(x_rest, y_rest, test_size=200, stratify=y_rest,
                                                      random_state=SEED)
    return (x_train, y_train), (x_cal, y_cal), (x_test, y_test)


# ---------------------------------------------------------------- layers (NCHW, float32)
def im2col(x):
    """[N,C,H,W] -> [N*H*W, C*9] patches of a 3x3 kernel, stride 1, pad 1.
    Column order (c, kh, kw) matches weight.reshape(out, -1), i.e. ONNX's OIHW layout."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=2)  # N,C,9,H,W
    return cols.transpose(0, 3, 4, 1, 2).reshape(n * h * w, c * 9)


def col2im(dcols, shape):
    """Adjoint of im2col: scatter-add patch gradients back onto the (unpadded) input."""
    n, c, h, w = shape
    d = dcols.reshape(n, h, w, c, 9).transpose(0, 3, 4, 1, 2)  # N,C,9,H,W
    dxp = np.zeros((n, c, h + 2, w + 2), dcols.dtype)
    for k in range(9):
        i, j = divmod(k, 3)
        dxp[:, :, i:i + h, j:j + w] += d[:, :, k]
    return dxp[:, :, 1:-1, 1:-1]


def conv_fwd(x, w, b):
    n, _, h, wd = x.shape
    cols = im2col(x)
    out = cols @ w.reshape(w.shape[0], -1).T + b
    return out.reshape(n, h, wd, -1).transpose(0, 3, 1, 2), cols


def conv_bwd(dout, cols, x_shape, w):
    d = dout.transpose(0, 2, 3, 1).reshape(-1, w.shape[0])
    dw = (d.T @ cols).reshape(w.shape)
    dx = col2im(d @ w.reshape(w.shape[0], -1), x_shape)
    return dx, dw, d.sum(0)


def pool_fwd(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def pool_bwd(dout, x, out):
    n, c, h, w = x.shape
    # Route the gradient to the window maximum. Ties only occur in practice for all-zero
    # windows (pool follows a ReLU), where the ReLU's backward zeroes them anyway.
    mask = x.reshape(n, c, h // 2, 2, w // 2, 2) == out[:, :, :, None, :, None]
    return (mask * dout[:, :, :, None, :, None]).reshape(x.shape)


# ---------------------------------------------------------------- model
SHAPES = {  # ONNX layouts: Conv OIHW, Gemm [out, in] with transB=1
    "conv1.weight": (16, 1, 3, 3), "conv1.bias": (16,),
    "conv2.weight": (32, 16, 3, 3), "conv2.bias": (32,),
    "conv3.weight": (32, 32, 3, 3), "conv3.bias": (32,),
    "fc1.weight": (64, 512), "fc1.bias": (64,),
    "fc2.weight": (10, 64), "fc2.bias": (10,),
}


def init_params(rng):
    p = {}
    for name, shape in SHAPES.items():
        if name.endswith(".weight"):
            fan_in = int(np.prod(shape[1:]))
            p[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)  # He
        else:
            p[name] = np.zeros(shape, np.float32)
    return p


def forward(p, x):
    c = {"x": x}
    c["a1"], c["cols1"] = conv_fwd(x, p["conv1.weight"], p["conv1.bias"])
    c["r1"] = np.maximum(c["a1"], 0)
    c["a2"], c["cols2"] = conv_fwd(c["r1"], p["conv2.weight"], p["conv2.bias"])
    c["r2"] = np.maximum(c["a2"], 0)
    c["p2"] = pool_fwd(c["r2"])
    c["a3"], c["cols3"] = conv_fwd(c["p2"], p["conv3.weight"], p["conv3.bias"])
    c["r3"] = np.maximum(c["a3"], 0)
    c["f"] = c["r3"].reshape(len(x), -1)  # same C-order flattening as ONNX Flatten(axis=1)
    c["a4"] = c["f"] @ p["fc1.weight"].T + p["fc1.bias"]
    c["r4"] = np.maximum(c["a4"], 0)
    logits = c["r4"] @ p["fc2.weight"].T + p["fc2.bias"]
    return logits, c


def backward(p, c, dlogits):
    g = {}
    g["fc2.weight"], g["fc2.bias"] = dlogits.T @ c["r4"], dlogits.sum(0)
    d = (dlogits @ p["fc2.weight"]) * (c["a4"] > 0)
    g["fc1.weight"], g["fc1.bias"] = d.T @ c["f"], d.sum(0)
    d = (d @ p["fc1.weight"]).reshape(c["r3"].shape) * (c["a3"] > 0)
    d, g["conv3.weight"], g["conv3.bias"] = conv_bwd(d, c["cols3"], c["p2"].shape, p["conv3.weight"])
    d = pool_bwd(d, c["r2"], c["p2"]) * (c["a2"] > 0)
    d, g["conv2.weight"], g["conv2.bias"] = conv_bwd(d, c["cols2"], c["r1"].shape, p["conv2.weight"])
    d = d * (c["a1"] > 0)
    _, g["conv1.weight"], g["conv1.bias"] = conv_bwd(d, c["cols1"], c["x"].shape, p["conv1.weight"])
    return g


def softmax_xent(logits, y):
    """Mean cross-entropy and its gradient w.r.t. the logits."""
    z = logits - logits.max(1, keepdims=True)
    prob = np.exp(z)
    prob /= prob.sum(1, keepdims=True)
    loss = -np.log(prob[np.arange(len(y)), y] + 1e-12).mean()
    prob[np.arange(len(y)), y] -= 1
    return loss, prob / len(y)


def predict(p, x):
    return np.concatenate([forward(p, x[i:i + 512])[0] for i in range(0, len(x), 512)])


def train(x, y, x_val, y_val, rng):
    p = init_params(rng)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2, step = 0.9, 0.999, 0
    steps_total = EPOCHS * int(np.ceil(len(x) / BATCH))
    for epoch in range(EPOCHS):
        order = rng.permutation(len(x))
        losses = []
        for i in range(0, len(x), BATCH):
            idx = order[i:i + BATCH]
            logits, cache = forward(p, x[idx])
            loss, dlogits = softmax_xent(logits, y[idx])
            grads = backward(p, cache, dlogits.astype(np.float32))
            # Adam with a cosine learning-rate decay: converges reliably in a few epochs
            # and the small final step size gives a stable, reproducible end point.
            step += 1
            lr = LR * 0.5 * (1 + np.cos(np.pi * step / steps_total))
            for k in p:
                m[k] = b1 * m[k] + (1 - b1) * grads[k]
                v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
                mhat, vhat = m[k] / (1 - b1 ** step), v[k] / (1 - b2 ** step)
                p[k] -= (lr * mhat / (np.sqrt(vhat) + 1e-8)).astype(np.float32)
            losses.append(loss)
        if epoch % 5 == 4 or epoch == EPOCHS - 1:
            val_acc = (predict(p, x_val).argmax(1) == y_val).mean()
            print(f"epoch {epoch + 1:3d}  loss {np.mean(losses):.4f}  calib acc {val_acc:.4f}")
    return p


# ---------------------------------------------------------------- export
def to_onnx(p, doc):
    # (node name, op type, inputs, attributes); each node writes tensor "<name>_out",
    # except the last one, which writes the graph output "logits".
    spec = [
        ("conv1", "Conv", ["input", "conv1.weight", "conv1.bias"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
        ("conv1_relu", "Relu", ["conv1_out"], {}),
        ("conv2", "Conv", ["conv1_relu_out", "conv2.weight", "conv2.bias"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
        ("conv2_relu", "Relu", ["conv2_out"], {}),
        ("pool", "MaxPool", ["conv2_relu_out"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
        ("conv3", "Conv", ["pool_out", "conv3.weight", "conv3.bias"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
        ("conv3_relu", "Relu", ["conv3_out"], {}),
        ("flatten", "Flatten", ["conv3_relu_out"], {"axis": 1}),
        ("fc1", "Gemm", ["flatten_out", "fc1.weight", "fc1.bias"], {"transB": 1}),
        ("fc1_relu", "Relu", ["fc1_out"], {}),
        ("fc2", "Gemm", ["fc1_relu_out", "fc2.weight", "fc2.bias"], {"transB": 1}),
    ]
    nodes = [helper.make_node(op, ins, ["logits" if name == "fc2" else f"{name}_out"], name=name, **attrs)
             for name, op, ins, attrs in spec]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(p[k], k) for k in SHAPES],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="qinspect resources/make_example.py", producer_version="1")
    # onnx 1.23 defaults to IR 14, which onnxruntime 1.31 refuses; IR 8 is what opset 13 needs.
    model.ir_version = 8
    model.doc_string = doc
    onnx.checker.check_model(model)
    return model


def main():
    t0 = time.perf_counter()
    rng = np.random.default_rng(SEED)
    (x_tr, y_tr), (x_cal, y_cal), (x_te, y_te) = load_splits()
    print(f"train {len(x_tr)}  calib {len(x_cal)}  test {len(x_te)}")

    p = train(x_tr, y_tr, x_cal, y_cal, rng)
    ref = predict(p, x_te)
    acc = float((ref.argmax(1) == y_te).mean())

    doc = (f"Small CNN for 8x8 handwritten digits (10 classes), the qinspect example model. "
           f"Trained in plain numpy by resources/make_example.py (seed {SEED}, Adam, {EPOCHS} epochs) on "
           f"{len(x_tr)} images of scikit-learn's load_digits() (UCI optical recognition of handwritten "
           f"digits), pixels scaled to [0, 1]. Test accuracy {acc:.4f} on the {len(x_te)} images "
           f"in digits_test.npz; digits_calib.npz holds {len(x_cal)} calibration images.")
    model = to_onnx(p, doc)
    onnx.save(model, HERE / "digits_cnn.onnx")

    # The exported graph must compute exactly what was trained.
    sess = ort.InferenceSession(str(HERE / "digits_cnn.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(["logits"], {"input": x_te})[0]
    diff = float(np.abs(out - ref).max())
    ort_acc = float((out.argmax(1) == y_te).mean())
    print(f"onnxruntime vs numpy max |diff| = {diff:.2e}")
    assert diff < 1e-4, diff
    assert ort_acc == acc, (ort_acc, acc)

    # Compressed: the pixels take only 17 distinct values, so the files shrink a lot.
    np.savez_compressed(HERE / "digits_calib.npz", input=x_cal, labels=y_cal)
    np.savez_compressed(HERE / "digits_test.npz", input=x_te, labels=y_te)
    (HERE / "README.md").write_text(README.format(acc=acc, n_tr=len(x_tr), n_cal=len(x_cal), n_te=len(x_te),
                                                  seed=SEED, epochs=EPOCHS))
    print(f"test accuracy {acc:.4f} ({int(round(acc * len(y_te)))}/{len(y_te)})   "
          f"time {time.perf_counter() - t0:.1f}s")


README = """\
# Example model and data

Generated by `python resources/make_example.py` (offline, deterministic; do not edit by hand).

- `digits_cnn.onnx` - small float32 CNN (opset 13, IR 8) classifying 8x8 handwritten digits:
  `input` [batch, 1, 8, 8] -> 3x Conv+Relu (one MaxPool) -> 2x Gemm -> `logits` [batch, 10].
  This is the model the app opens by default.
- `digits_calib.npz` - calibration set: `input` float32 [{n_cal}, 1, 8, 8], `labels` int64 [{n_cal}].
- `digits_test.npz` - test set: `input` float32 [{n_te}, 1, 8, 8], `labels` int64 [{n_te}].

Source data: scikit-learn's bundled `load_digits()` (its copy of the test set of the UCI
"Optical Recognition of Handwritten Digits" data set; 1797 images, shipped in the wheel, no
download). Pixels are scaled from 0..16 to [0, 1]; stratified split into {n_tr} train /
{n_cal} calibration / {n_te} test images. The network is trained in plain numpy (seed {seed},
Adam, {epochs} epochs) and the exported graph is checked against it in onnxruntime.

Float test accuracy: {acc:.4f}.

To regenerate: `python resources/make_example.py` (needs numpy, onnx, onnxruntime, scikit-learn).
Results are bit-identical on the same machine; a different BLAS may change the last bits.
"""

if __name__ == "__main__":
    main()
