"""The runtime check: the exported QDQ model, run in onnxruntime the way users run it.

The simulation computes what the QDQ model means; onnxruntime with its default session options
computes something else wherever its fused integer kernels differ from that meaning (u8s8
saturation on x86 CPUs without VNNI, MatMulNBits quantizing a float input). `RuntimeRun` exports
the model to a temporary file, as `qinspect export` writes it, opens it with default session
options and the chosen providers, and measures each output against the float model on the same
batches as the comparison. `explain` names the known causes of a gap.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from ..errors import ModelError
from ..io.qdq import export_qdq
from ..targets.cpu import cpu_label, saturating_weights, u8s8_saturates
from ..targets.profiles import get_target

GAP_DB = 1.0  # simulated and runtime output SQNR further apart than this need an explanation
# Above this both mean "float32 rounding only" (two float runs that sum in another order differ by
# about that much), so two such SQNRs agree whatever their difference.
FLOAT_NOISE_DB = 100.0
# onnxruntime's pass that fuses QDQ node units into integer kernels (QLinearConv, QLinearMatMul, ...)
QDQ_FUSIONS = ("QDQSelectorActionTransformer",)


def agree(a: float | None, b: float | None) -> bool:
    """Two output SQNRs (dB) that tell the same story: within GAP_DB, or both at float32's noise floor."""
    if a is None or b is None:
        return True
    if a == b or (a >= FLOAT_NOISE_DB and b >= FLOAT_NOISE_DB):
        return True
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= GAP_DB


@dataclass
class RuntimeCheck:
    """What the exported model gave in onnxruntime next to what the simulation says."""

    target: str
    providers: list[str]
    cpu: str
    outputs: dict[str, float]          # output -> SQNR in dB of the runtime against float
    simulated: dict[str, float] = field(default_factory=dict)
    causes: list[str] = field(default_factory=list)  # known causes of a gap, one line each
    notes: list[str] = field(default_factory=list)   # what the export said

    def gaps(self) -> dict[str, float]:
        """Output -> simulated minus runtime SQNR (dB), for outputs where both are finite."""
        out = {}
        for name, rt in self.outputs.items():
            sim = self.simulated.get(name)
            if sim is None:
                continue
            if math.isinf(sim) and math.isinf(rt) and sim == rt:
                out[name] = 0.0
            elif math.isfinite(sim) and math.isfinite(rt):
                out[name] = sim - rt
            else:
                out[name] = math.inf if sim > rt else -math.inf
        return out

    def agrees(self) -> bool:
        return all(agree(self.simulated.get(n), rt) for n, rt in self.outputs.items())

    def to_dict(self) -> dict:
        def num(v):
            return None if v is None or not math.isfinite(v) else v

        return {"target": self.target, "providers": list(self.providers), "cpu": self.cpu,
                "agrees_within_db": GAP_DB, "float_noise_db": FLOAT_NOISE_DB, "agrees": self.agrees(),
                "causes": list(self.causes),
                "notes": list(self.notes), "gaps_db": {k: num(v) for k, v in self.gaps().items()}}

    def lines(self) -> list[str]:
        lines = [f"runtime: onnxruntime {ort.__version__}, default session options, {', '.join(self.providers)}, "
                 f"{self.cpu}, target {self.target}"]
        for name, rt in self.outputs.items():
            sim = self.simulated.get(name)
            lines.append(f"  output {name}: runtime SQNR {_db(rt)} dB, simulated {_db(sim)} dB")
        if not self.agrees():
            worst = max(self.gaps().values(), key=abs)
            lines.append(f"warning: the exported model differs from the simulation by {_db(abs(worst))} dB in "
                         f"onnxruntime on this machine")
            lines += [f"  cause: {c}" for c in self.causes] or ["  cause: not a known one; please report it with the "
                                                                "model"]
        return lines


def _db(v) -> str:
    if v is None:
        return "-"
    return "inf" if v == math.inf else ("-inf" if v == -math.inf else f"{v:.1f}")


def explain(index, encodings, providers, flags=None) -> list[str]:
    """Known reasons why onnxruntime with default options computes something else than the simulation."""
    causes = []
    cpu = providers is None or "CPUExecutionProvider" in providers[:1]
    if cpu and u8s8_saturates(flags):
        names = saturating_weights(index, encodings)
        if names:
            causes.append(f"u8s8 saturation: this CPU ({cpu_label(flags)}) has no VNNI, and onnxruntime's integer "
                          f"kernels saturate {len(names)} weight(s) whose 8-bit codes pass +-64 ({', '.join(names[:4])}"
                          f"{' ...' if len(names) > 4 else ''}); use --target ort-cpu (7-bit weight grid)")
    if cpu:
        names = _float_input_integer_weight(index, encodings)
        if names:
            causes.append(f"MatMulNBits: onnxruntime runs {', '.join(names[:4])} (a float input times an integer "
                          f"weight) as MatMulNBits, which quantizes the input internally; quantize the input or keep "
                          f"the weight float")
    return causes


def fusion_cause(unfused: dict, simulated: dict) -> str | None:
    """The cause when the exported model run without onnxruntime's QDQ fusions (`unfused`: output ->
    SQNR) gives what the simulation says: the fused integer kernels compute something else."""
    if not unfused or not all(agree(simulated.get(n), v) for n, v in unfused.items()):
        return None
    shown = ", ".join(f"{n} {_db(v)} dB" for n, v in list(unfused.items())[:3])
    return (f"onnxruntime's fused QDQ kernels: with its QDQ fusions off (disabled_optimizers="
            f"{list(QDQ_FUSIONS)}) the exported model gives what the simulation says ({shown}); the integer "
            f"kernels it fuses compute this model's quantized ops differently on this CPU")


def _float_input_integer_weight(index, encodings) -> list[str]:
    out = []
    for group in index.op_groups().values():
        if group.op_type not in ("MatMul", "Gemm") or not group.input:
            continue
        w, x = encodings.get(group.weight), encodings.get(index.encoding_source(group.input))
        if w is not None and not w.is_float and (x is None or x.is_float):
            out.append(group.node)
    return out


class RuntimeRun:
    """The exported QDQ model in an onnxruntime session with default options; `run` returns the
    model's float outputs for a batch of feeds."""

    def __init__(self, index, encodings, *, target=None, providers=None, disabled_optimizers=()):
        self.target = get_target(target).name
        self.providers = list(providers or ["CPUExecutionProvider"])
        self._dir = tempfile.mkdtemp(prefix="qinspect-runtime-")
        path = os.path.join(self._dir, "model_qdq.onnx")
        try:
            report = export_qdq(index, encodings, path, protect=[p for p in (index.path,) if p], target=self.target)
            self.notes = report.warnings + report.notes
            options = ort.SessionOptions()  # the defaults users run with; only less logging
            options.log_severity_level = 3
            self.session = ort.InferenceSession(path, options, providers=self.providers,
                                                disabled_optimizers=list(disabled_optimizers))
        except ModelError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            reason = " ".join(str(exc).split())[:300]
            raise ModelError(f"onnxruntime refuses the exported QDQ model with default session options ({reason}); "
                             f"check the target (--target) and the edits it names") from exc
        self.inputs = {i.name for i in self.session.get_inputs()}

    def run(self, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        try:
            return self.session.run(names, {k: v for k, v in feeds.items() if k in self.inputs})
        except Exception as exc:
            raise ModelError(f"the exported QDQ model failed in onnxruntime: {str(exc).splitlines()[0]}") from exc

    def close(self) -> None:
        self.session = None
        shutil.rmtree(self._dir, ignore_errors=True)
