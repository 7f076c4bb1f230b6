"""Calibration: run onnxruntime over the data and reduce every activation to streaming statistics.

One session exposes the activations as extra outputs; each batch's outputs are reduced at once to
`TensorStats` and dropped, so memory does not grow with the number of samples. When exposing every
tensor at once would need too much memory for one batch, the tensors are split into groups and the
data is run once per group.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from .errors import DataError, ModelError
from .progress import NullProgress, Progress, check_cancel
from .stats import DEFAULT_BINS, TensorStats

# Activation bytes of one batch that may be exposed at once; larger models run in several passes.
DEFAULT_GROUP_BYTES = 1 << 30
_TWO_GB = 2**31 - 1


@dataclass
class CalibrationResult:
    stats: dict[str, TensorStats]  # activations from the data, weights and biases from their values
    samples: int
    passes: int = 1
    seconds: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)  # tensor -> why it has no statistics


def available_providers() -> list[str]:
    return ort.get_available_providers()


def _estimate_bytes(info, batch: int) -> int:
    """Bytes of one batch of a tensor; unknown dims count as the batch (first) or 64."""
    if info is None or info.shape is None:
        return 4 << 20
    n = 1
    for i, d in enumerate(info.shape):
        n *= d if isinstance(d, int) and d > 0 else (batch if i == 0 else 64)
    itemsize = np.dtype(info.dtype).itemsize if info.dtype is not None else 4
    return n * itemsize


def plan_groups(index, names: list[str], batch: int, budget: int = DEFAULT_GROUP_BYTES) -> list[list[str]]:
    """Split tensors into groups whose outputs of one batch fit in `budget` bytes."""
    groups: list[list[str]] = [[]]
    used = 0
    for name in names:
        size = _estimate_bytes(index.tensors.get(name), batch)
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    return [g for g in groups if g]


def _session(index, outputs: list[str], providers, workdir: str) -> ort.InferenceSession:
    model = onnx.ModelProto()
    model.CopyFrom(index.model)
    graph = model.graph
    existing = {o.name for o in graph.output}
    for name in outputs:
        if name in existing:
            continue
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(index.tensors[name].dtype))
        graph.output.append(helper.make_tensor_value_info(name, elem, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        if model.ByteSize() < _TWO_GB:
            return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        # Protobuf cannot hold 2 GB: hand onnxruntime a file with external data instead.
        path = os.path.join(workdir, "calibration.onnx")
        onnx.save_model(model, path, save_as_external_data=True, location="calibration.data")
        return ort.InferenceSession(path, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        where = index.path or "the model"
        raise ModelError(f"{where}: onnxruntime cannot run it ({str(exc).splitlines()[0]})") from exc


def _run(session, feeds, names, source) -> list:
    try:
        return session.run(names, feeds)
    except Exception as exc:
        shapes = ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in feeds.items())
        raise DataError(f"{source}: onnxruntime failed on a batch ({shapes}): {str(exc).splitlines()[0]}") from exc


def calibrate(
    index,
    data,
    *,
    batch_size: int = 8,
    progress: Progress | None = None,
    providers: list[str] | None = None,
    bins: int = DEFAULT_BINS,
    group_bytes: int = DEFAULT_GROUP_BYTES,
) -> CalibrationResult:
    """Statistics of every activation of `index` over the samples of `data`.

    Cancellation is checked between batches and raises `Cancelled`; nothing is returned then, so
    the caller's previous state stays as it was.
    """
    progress = progress or NullProgress()
    providers = providers or ["CPUExecutionProvider"]
    started = time.perf_counter()
    stats: dict[str, TensorStats] = {}
    skipped: dict[str, str] = {}
    feed_names = {i.name for i in index.inputs}
    main_graph = {o for n in index.model.graph.node for o in n.output}
    exposed = []
    for name in index.activations():
        if name in feed_names:
            continue
        if name in main_graph:
            exposed.append(name)
        else:
            skipped[name] = "inside a control-flow subgraph, which calibration does not reach yet"
    inputs_to_track = [n for n in index.activations() if n in feed_names]
    groups = plan_groups(index, exposed, batch_size, group_bytes) or [[]]
    samples = len(data)
    if samples == 0:
        raise DataError("the calibration data has no samples")
    total = samples * len(groups)
    done = 0
    progress.update(0, total, "starting")
    with tempfile.TemporaryDirectory(prefix="qinspect-") as workdir:
        for g, group in enumerate(groups):
            check_cancel(progress)
            outputs = group or [index.outputs[0]]
            session = _session(index, outputs, providers, workdir)
            track_inputs = g == 0
            for count, feeds in data.counted_batches(batch_size):
                check_cancel(progress)
                values = _run(session, feeds, outputs, getattr(data, "name", "calibration data"))
                for name, value in zip(outputs, values):
                    if group:
                        stats.setdefault(name, TensorStats(bins)).update(value)
                if track_inputs:
                    for name in inputs_to_track:
                        stats.setdefault(name, TensorStats(bins)).update(feeds[name])
                del values
                done += count
                progress.update(min(done, total), total, f"pass {g + 1}/{len(groups)}")
            del session
    for name in list(index.weights()) + list(index.biases()):
        stats[name] = TensorStats.of(index.initializer(name), bins)
    return CalibrationResult(stats, samples, len(groups), time.perf_counter() - started, skipped)
