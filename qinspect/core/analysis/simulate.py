"""Simulation of a plan in onnxruntime: the float model with a fake quantizer on every quantized tensor.

The fake quantizer is ONNX's rule written with float ops,
``(clip(round(x / scale) + zp, qmin, qmax) - zp) * scale``, in the equal four-op form
``clip(round(x / scale), qmin - zp, qmax - zp) * scale`` where it can (see `_short`) (Round rounds ties to even, as
QuantizeLinear does; the division is float32, as in onnxruntime's kernel), so the simulation gives
what the exported QDQ model computes without using its QuantizeLinear/DequantizeLinear kernels.
Its parameters are graph inputs, and the quantized weights are fed in place of the float
initializers, so a new encoding of the same kind needs no new session: `Simulator.set_encodings`
only rebuilds when a tensor changes between integer, float16 and float32 (or a constant inside a
control-flow subgraph changes, since only main-graph constants can be fed).

Positions follow the exporter (`io/qdq.py`): activations and their aliases, weights, biases (int32
biases derived from input x weight scale where the encodings have none), float16 round trips.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from ..quant.encoding import Encoding
from ..errors import ModelError
from ..graph.edit import NameMaker, all_graphs, constants_to_initializers, convert_opset, elem_type, insert_blocks, opset_of
from ..quant.qparams import complete_encodings, fake_quantize, onnx_qparams

PARAM = "qinspect.fq::"  # prefix of the fake quantizers' parameter inputs
# Parameters that make an integer fake quantizer an identity (see `Simulator.set_encodings`).
PASS_SCALE = np.float32(2.0**-60)
PASS_BOUND = np.finfo(np.float32).max
_TWO_GB = 2**31 - 1


def quantizer_kind(enc: Encoding | None) -> str:
    """"int", "fp16" or "none": the three shapes a quantizer position can take in a graph."""
    if enc is None:
        return "none"
    return _kind(enc)


@functools.lru_cache(maxsize=4096)  # called for every position on every variant of a search
def _kind(enc: Encoding) -> str:
    if enc.is_float:
        return "fp16" if enc.bw == 16 else "none"
    qp = onnx_qparams(enc)
    return "int" if qp is not None and qp.bw != 32 else "none"


@functools.lru_cache(maxsize=4096)
def _short(enc: Encoding) -> bool:
    """Whether an integer quantizer can take the four-op form ``clip(round(x / scale), qmin - zp,
    qmax - zp) * scale``: one zero point (Clip's bounds are scalars) and at most 16 bits. It is
    exactly the six-op rule: round(x / scale) + zp is exact below 2^24 in float32, and above it
    both forms clip to the same bound."""
    qp = onnx_qparams(enc)
    zp = np.asarray(qp.zero_point)
    return qp.bw <= 16 and (zp.size <= 1 or bool((zp == zp.flat[0]).all()))


def activation_positions(index, encodings: dict[str, Encoding]) -> dict[str, Encoding | None]:
    """Every activation quantizer as the exporter places it: targets, then per-tensor aliases with
    their source's encoding."""
    existing = _existing(index)
    out: dict[str, Encoding | None] = {n: encodings.get(n) for n in index.activations() if n not in existing}
    for alias in index.aliases:
        source = index.encoding_source(alias)
        enc = encodings.get(source)
        if enc is not None and not enc.is_float and not enc.per_channel and source not in existing:
            out[alias] = enc
    return out


def _existing(index) -> set[str]:
    """Tensors the model already quantizes: their quantizers are in the graph, never added again."""
    return {n for n, t in index.targets.items() if getattr(t, "existing", None) is not None}


def _external_folder(model: onnx.ModelProto, label) -> str | None:
    """Where tensors the model still stores externally are: next to the model file `label` (a model
    indexed lazily, see `load_model`); None when every tensor is in the proto."""
    from ..graph.walk import _all_tensors

    if not isinstance(label, str) or not os.path.isfile(label):
        return None
    if any(t.data_location == TensorProto.EXTERNAL for t in _all_tensors(model.graph)):
        return os.path.dirname(os.path.abspath(label))
    return None


def make_session(model: onnx.ModelProto, providers, workdir: str | None, label: str,
                 threads: int = 0, plain_qdq: bool = False) -> ort.InferenceSession:
    """A session of `model`; `threads` > 0 sets onnxruntime's threads per run (0: its default);
    `plain_qdq` runs QuantizeLinear/DequantizeLinear as they are, never fused into integer ops."""
    from ..calib.calibrate import runtime_problem

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    if plain_qdq:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    # Idle worker threads spin after each run by default, stealing the CPU from the numpy work
    # between runs (metrics, fake quantization): measured 2-3x slower comparisons with spinning.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    folder = _external_folder(model, label)
    if folder:  # onnxruntime reads those tensors from their files: they are never copied here
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    try:
        if model.ByteSize() < _TWO_GB:
            return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        path = os.path.join(workdir, "simulation.onnx")
        onnx.save_model(model, path, save_as_external_data=True, location="simulation.data")
        return ort.InferenceSession(path, options, providers=providers)
    except Exception as exc:
        raise runtime_problem(label, exc) from exc


def expose(model: onnx.ModelProto, index, names, read_as: dict[str, str] | None = None) -> None:
    """Add `names` (main-graph tensors) as outputs of `model`, each read from `read_as[name]`
    (a tensor of the same type) when given."""
    read_as = read_as or {}
    existing = {o.name for o in model.graph.output}
    for name in names:
        tensor = read_as.get(name, name)
        if tensor not in existing:
            model.graph.output.append(helper.make_tensor_value_info(tensor, elem_type(index, name), None))
            existing.add(tensor)


class Simulator:
    """The plan's quantized model, as onnxruntime runs it, with cheap encoding updates.

    `names` are main-graph tensors to expose: `run` returns their quantized values by their
    original names (a quantized graph input is read after its fake quantizer).
    """

    def __init__(self, index, encodings: dict[str, Encoding], *, names=(), providers=None):
        self.index = index
        self.providers = providers or ["CPUExecutionProvider"]
        self.names = list(names)
        self.rebuilds = 0
        self._workdir: str | None = None
        main = index.model.graph
        self._main_consts = {t.name for t in main.initializer} | {
            n.output[0] for n in main.node if n.op_type == "Constant" and n.output}
        self._structure = None
        self._overrides: dict[str, np.ndarray] = {}
        self._quantized: dict[str, tuple] = {}  # constant -> (encoding, its fake-quantized value): the last one
        self._qparams: dict[tuple, dict] = {}  # (position, encoding) -> its parameter feeds
        self._last_params: dict[str, tuple] = {}  # position -> (encoding object, pass-through, its feeds)
        self._shapes: dict[str, tuple] = {}       # position -> (encoding object, its shape; see _shape_of)
        self._constant_names: list[str] | None = None
        self.model: onnx.ModelProto | None = None  # the simulation graph (segments are cut from it)
        self.set_encodings(encodings)

    def close(self) -> None:
        self._session = None
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # -- structure ---------------------------------------------------------------------------------
    def _structure_of(self, positions, encodings) -> tuple:
        acts = tuple((n, *self._shape_of(n, e)) for n, e in positions.items())  # positions: index order
        baked = tuple(sorted((n, encodings.get(n)) for n in self._constants() if n not in self._main_consts))
        return acts, baked

    def _shape_of(self, name: str, enc: Encoding | None) -> tuple[str, bool]:
        """(quantizer_kind, four-op form) of a position, cached by the encoding object: variants
        share their encodings, and hashing one (its scale tuples) thousands of times added up."""
        hit = self._shapes.get(name)
        if hit is None or hit[0] is not enc:
            kind = quantizer_kind(enc)
            hit = self._shapes[name] = (enc, (kind, kind == "int" and _short(enc)))
        return hit[1]

    def _constants(self) -> list[str]:
        if self._constant_names is None:  # the index does not change under a simulator
            existing = _existing(self.index)
            self._constant_names = [n for n in self.index.weights() + self.index.biases() if n not in existing]
        return self._constant_names

    def set_encodings(self, encodings: dict[str, Encoding], *, passthrough=()) -> bool:
        """Use `encodings` from now on; True if that needed a new session.

        `passthrough` names activation quantizers (targets; their aliases follow) to run as
        float32 while their integer encoding keeps its place in the session: they are fed scale
        2^-60, zero point 0 and bounds +-FLT_MAX, so x / scale is exact and already whole, and
        the block returns x unchanged for 2^-37 <= |x| < 2^68 (off by under 2^-61 below that).
        Sensitivity analysis uses it to keep a tensor float without a new session."""
        encodings = complete_encodings(self.index, encodings)
        positions = activation_positions(self.index, encodings)
        structure = self._structure_of(positions, encodings)
        rebuilt = structure != self._structure
        if rebuilt:
            self._build(positions, encodings)
            self._structure = structure
            self.rebuilds += 1
        self.encodings = encodings
        self._feeds = self._parameter_feeds(positions, encodings, set(passthrough))
        return rebuilt

    def _build(self, positions, encodings) -> None:
        index = self.index
        label = index.path or "the in-memory model"
        model = onnx.ModelProto()
        model.CopyFrom(index.model)
        if opset_of(model) < 13:
            model = convert_opset(model, 13, label)  # Round, and Clip with bound inputs
        names = NameMaker(model)
        constants_to_initializers(model, set(self._constants()))
        graph = model.graph
        inputs = {vi.name for vi in graph.input}
        for t in graph.initializer:  # fed in place of their float values (overridable initializers)
            if t.name in index.targets and t.name not in inputs:
                graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        for g in all_graphs(graph):
            if g is graph:
                continue
            for t in g.initializer:  # subgraph constants cannot be fed: bake them
                if t.name in index.targets and encodings.get(t.name) is not None:
                    t.CopyFrom(onnx.numpy_helper.from_array(self._constant(t.name, encodings[t.name]), t.name))
        blocks = {}
        for name, enc in positions.items():
            kind = quantizer_kind(enc)
            if kind == "int":
                blocks[name] = self._int_block(name, names, graph, _short(enc))
            elif kind == "fp16" and elem_type(index, name) != TensorProto.FLOAT16:
                blocks[name] = self._fp16_block(name, names)
        renames = insert_blocks(model, blocks, names)
        self._read_as = {n: renames.get(n, n) for n in self.names}
        expose(model, index, self.names, self._read_as)
        self.model = model
        if model.ByteSize() >= _TWO_GB and self._workdir is None:
            self._workdir = tempfile.mkdtemp(prefix="qinspect-sim-")
        self._session = make_session(model, self.providers, self._workdir, label)
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._inputs |= {i.name for i in self._session.get_overridable_initializers()}

    def _int_block(self, name, names, graph, short: bool):
        elem = elem_type(self.index, name)
        keys = ("scale", "lo", "hi") if short else ("scale", "zp", "qmin", "qmax")
        p = {k: PARAM + name + "::" + k for k in keys}
        for k in p.values():
            graph.input.append(helper.make_tensor_value_info(k, TensorProto.FLOAT, None))

        def block(src, dst):
            nodes, x = [], src
            if elem != TensorProto.FLOAT:
                x = names(dst + "_f32")
                nodes.append(helper.make_node("Cast", [src], [x], to=TensorProto.FLOAT))
            t = [names(f"{dst}_fq{i}") for i in range(5)]
            out = dst if elem == TensorProto.FLOAT else names(dst + "_fq")
            if short:  # four elementwise passes instead of six: most of a simulated graph's extra work
                nodes += [
                    helper.make_node("Div", [x, p["scale"]], [t[0]]),
                    helper.make_node("Round", [t[0]], [t[1]]),
                    helper.make_node("Clip", [t[1], p["lo"], p["hi"]], [t[2]]),
                    helper.make_node("Mul", [t[2], p["scale"]], [out]),
                ]
            else:
                nodes += [
                    helper.make_node("Div", [x, p["scale"]], [t[0]]),
                    helper.make_node("Round", [t[0]], [t[1]]),
                    helper.make_node("Add", [t[1], p["zp"]], [t[2]]),
                    helper.make_node("Clip", [t[2], p["qmin"], p["qmax"]], [t[3]]),
                    helper.make_node("Sub", [t[3], p["zp"]], [t[4]]),
                    helper.make_node("Mul", [t[4], p["scale"]], [out]),
                ]
            if elem != TensorProto.FLOAT:
                nodes.append(helper.make_node("Cast", [out], [dst], to=elem))
            return nodes

        return block

    @staticmethod
    def _fp16_block(name, names):
        def block(src, dst):
            half = names(dst + "_fp16")
            return [helper.make_node("Cast", [src], [half], to=TensorProto.FLOAT16),
                    helper.make_node("Cast", [half], [dst], to=TensorProto.FLOAT)]
        return block

    # -- feeds -------------------------------------------------------------------------------------
    def _parameter_feeds(self, positions, encodings, passthrough=frozenset()) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for name, enc in positions.items():
            kind, short = self._shape_of(name, enc)
            if kind != "int":
                continue
            through = bool(passthrough) and self.index.encoding_source(name) in passthrough
            last = self._last_params.get(name)
            if last is None or last[0] is not enc or last[1] != through:
                key = (name, None if through else enc, short)
                if key not in self._qparams:  # cached: sensitivity and search set thousands of variants
                    self._qparams[key] = self._block_feeds(name, None if through else enc, short)
                last = self._last_params[name] = (enc, through, self._qparams[key])
            feeds.update(last[2])
        for name in self._constants():
            enc = encodings.get(name)
            if name in self._inputs and enc is not None and not (enc.is_float and enc.bw == 32):
                feeds[name] = self._constant(name, enc)
        return feeds

    def _block_feeds(self, name: str, enc: Encoding | None, short: bool) -> dict[str, np.ndarray]:
        """A fake quantizer's parameters; `enc` None: the identity ones (see `set_encodings`)."""
        p = PARAM + name + "::"
        if enc is None:
            if short:
                return {p + "scale": np.array(PASS_SCALE), p + "lo": np.array(-PASS_BOUND), p + "hi": np.array(PASS_BOUND)}
            return {p + "scale": np.array(PASS_SCALE), p + "zp": np.array(0, np.float32),
                    p + "qmin": np.array(-PASS_BOUND), p + "qmax": np.array(PASS_BOUND)}
        qp = onnx_qparams(enc)
        shape = ()
        if qp.axis is not None:
            rank = len(self.index.tensors[name].shape or ())
            shape = [1] * rank
            shape[qp.axis] = qp.scale.size
        scale = qp.scale.astype(np.float32).reshape(shape)
        if short:
            zp = float(np.asarray(qp.zero_point).flat[0])
            return {p + "scale": scale, p + "lo": np.array(qp.qmin - zp, np.float32),
                    p + "hi": np.array(qp.qmax - zp, np.float32)}
        return {p + "scale": scale, p + "zp": qp.zero_point.astype(np.float32).reshape(shape),
                p + "qmin": np.array(qp.qmin, np.float32), p + "qmax": np.array(qp.qmax, np.float32)}

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        """The parameter and constant feeds of the current encodings (read only)."""
        return self._feeds

    def set_constant(self, name: str, value: np.ndarray) -> None:
        """Use `value` for a main-graph weight or bias from now on (quantized with its encoding, as
        the index's value would be): PTQ steps try new weights and biases without a new session."""
        self._overrides[name] = np.asarray(value)
        self._quantized.pop(name, None)
        if name in self._inputs and name in self._feeds:
            self._feeds[name] = self._constant(name, self.encodings.get(name))

    def _constant(self, name: str, enc: Encoding | None) -> np.ndarray:
        cached = self._quantized.get(name)
        if cached is None or cached[0] != enc:
            value = self._overrides[name] if name in self._overrides else self.index.quantized_value(name)
            # asarray: a 0-d constant (a scale, an epsilon) would come back as a numpy scalar, which
            # onnxruntime refuses as a feed.
            cached = self._quantized[name] = (enc, np.asarray(fake_quantize(value, enc), dtype=value.dtype))
        return cached[1]

    def constant_value(self, name: str) -> np.ndarray:
        """The value a weight or bias takes in the simulation (and the export)."""
        return self._constant(name, self.encodings.get(name))

    def run(self, feeds: dict[str, np.ndarray], names=None) -> list[np.ndarray]:
        names = self.names if names is None else list(names)
        try:
            return self._session.run([self._read_as[n] for n in names], {**feeds, **self._feeds})
        except Exception as exc:
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items())
            raise ModelError(f"the quantized simulation failed on a batch ({shapes}): {str(exc).splitlines()[0]}") from exc
