"""PTQ steps on a project's model: cross-layer equalization, SeqMSE, AdaRound, bias correction.

`run_step` is a plain long job (progress and cancel): it computes a step's result from the current
index, plan, statistics and data without changing them, and returns a `StepOutcome` that
`Project.apply_step` puts in place in one go (so a command can undo it by putting the previous
state back). What each step changes:

- cross-layer equalization rewrites the float model (the same function, Relu6 aside), so the
  statistics are computed again on the same data;
- SeqMSE freezes weight encodings (chosen ranges), the model is unchanged;
- AdaRound gives the weights' quantizers the learned values (`index.ptq_values`) and freezes the
  weight encodings they sit on;
- bias correction gives the biases' quantizers corrected values (a Conv or Gemm without a bias first
  gets a zero one).

The float model stays the reference the errors are measured against: AdaRound's and bias
correction's values go to the quantizers only. `ORDER` is the order the command line applies them
in; in the window, equalization must come before the others.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from .analysis.layer_data import LayerData
from .errors import QInspectError
from .plan import PrecisionPlan, derive_encodings
from .progress import NullProgress, Progress
from .ptq.adaround import AdaroundOptions, adaround
from .ptq.bias_correction import bias_correction, with_biases
from .ptq.cle import equalize
from .ptq.layers import model_layers
from .ptq.prepare import prepare_model
from .ptq.seq_mse import seq_mse
from .quant.encoding import Encoding

ORDER = ("cle", "seq-mse", "adaround", "bias-correction")
TITLES = {"cle": "cross-layer equalization", "seq-mse": "SeqMSE", "adaround": "AdaRound",
          "bias-correction": "bias correction"}
NEEDS_DATA = frozenset({"seq-mse", "adaround", "bias-correction"})
DEFAULT_SAMPLES = 128  # samples data-driven steps learn from (all of them when the data has fewer)
OPTIONS = {
    "cle": {"absorb_high_bias": True},
    "seq-mse": {"samples": DEFAULT_SAMPLES, "candidates": 20},
    "adaround": {"samples": DEFAULT_SAMPLES, "iterations": AdaroundOptions.iterations,
                 "reg_param": AdaroundOptions.reg_param},
    "bias-correction": {"samples": DEFAULT_SAMPLES, "method": "empirical"},
}

Recalibrate = Callable[[object, Progress], "tuple[dict, int]"]  # (index, progress) -> (stats, samples)


@dataclass
class StepRecord:
    """A step as sessions save it and the window lists it."""
    step: str
    options: dict
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def title(self) -> str:
        return TITLES.get(self.step, self.step)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StepRecord:
        return cls(str(d["step"]), dict(d.get("options", {})), list(d.get("notes", [])), float(d.get("seconds", 0.0)))


@dataclass
class StepOutcome:
    record: StepRecord
    index: object                     # the ModelIndex after the step
    stats: dict | None = None         # new statistics (equalization changed the activations)
    samples: int = 0
    frozen: dict[str, Encoding] = field(default_factory=dict)  # weight encodings to freeze


def parse_steps(text: str) -> list[str]:
    """"cle,adaround" -> the steps in `ORDER`; ValueError naming what is unknown."""
    names = [s.strip().lower().replace("_", "-") for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in ORDER]
    if unknown:
        raise ValueError(f"unknown PTQ step {', '.join(unknown)}: use any of {', '.join(ORDER)}")
    return [s for s in ORDER if s in names]


def step_options(step: str, **given) -> dict:
    """The step's options: its defaults with `given` (None values ignored) on top."""
    if step not in OPTIONS:
        raise ValueError(f"unknown PTQ step {step!r}: use one of {', '.join(ORDER)}")
    unknown = set(given) - set(OPTIONS[step])
    if unknown:
        raise ValueError(f"{TITLES[step]} has no option {', '.join(sorted(unknown))}")
    return {**OPTIONS[step], **{k: v for k, v in given.items() if v is not None}}


def refusal(step: str, index, done: list[str], calibrated: bool, has_data: bool, options: dict | None = None) -> str | None:
    """Why `step` cannot run now (one line with the fix), or None."""
    if index is None:
        return "open a model first"
    if getattr(index, "quantized_model", False):
        return "the model is already quantized: PTQ steps work on float models"
    if getattr(index, "external_dir", None):
        return "PTQ steps need the weights in memory; models with over 1 GB of external data are not supported"
    if not model_layers(index.model):
        return "the model has no Conv, Gemm or MatMul with constant weights"
    if step == "cle" and any(s != "cle" for s in done):
        later = ", ".join(TITLES[s] for s in done if s != "cle")
        return f"cross-layer equalization changes the weights {later} worked on: undo {later} first"
    analytic = step == "bias-correction" and (options or {}).get("method") == "analytic"
    if step in NEEDS_DATA and not (calibrated and (has_data or analytic)):
        return f"{TITLES[step]} learns from the calibration data: calibrate first"
    return None


def _reindexed(index, model, target: str, bn_params: dict):
    """The index of a rewritten model, as the user's file (path, notes) with PTQ state carried over."""
    new = prepare_model(model, target)
    new.path, new.notes = index.path, list(index.notes)
    new.bn_params = bn_params
    new.ptq_values = {k: v for k, v in index.ptq_values.items() if k in new.tensors}
    return new


def _layer_data(index, encodings, data, options, providers) -> LayerData:
    layers = [layer for layer, _ in model_layers(index.model).values()]
    return LayerData(index, encodings, data, inputs=[la.input for la in layers], outputs=[la.output for la in layers],
                     samples=options.get("samples"), providers=providers)


def _skipped(skipped: dict[str, str]) -> list[str]:
    lines = [f"left {layer} as it was: {why}" for layer, why in list(skipped.items())[:8]]
    if len(skipped) > 8:
        lines.append(f"... and {len(skipped) - 8} more layers")
    return lines


def run_step(step: str, index, plan: PrecisionPlan, stats: dict, data=None, *, options: dict | None = None,
             done: list[str] = (), recalibrate: Recalibrate | None = None, providers=None,
             progress: Progress | None = None) -> StepOutcome:
    """Compute `step` on the current state (nothing is changed); see the module's docstring.
    `recalibrate(index, progress)` gives statistics of a rewritten model (None: there are none yet)."""
    progress = progress or NullProgress()
    options = step_options(step, **(options or {}))
    why = refusal(step, index, list(done), bool(stats), data is not None, options)
    if why:
        raise QInspectError(f"{TITLES.get(step, step)}: {why}")
    started = time.perf_counter()
    record = StepRecord(step, options)
    if step == "cle":
        model, bn_params, report = equalize(index.model, index.bn_params,
                                            absorb_high_bias=bool(options["absorb_high_bias"]), progress=progress)
        new = _reindexed(index, model, plan.target, bn_params)
        record.notes = report.notes()
        outcome = StepOutcome(record, new)
        if recalibrate is not None and stats:
            outcome.stats, outcome.samples = recalibrate(new, progress)
            record.notes.append(f"statistics computed again on {outcome.samples} samples: the activations between "
                                "equalized layers changed")
    else:
        encodings = derive_encodings(index, stats, plan)
        work = index
        if step == "bias-correction":
            model, added = with_biases(index.model, index.bn_params)
            if added:
                work = _reindexed(index, model, plan.target, index.bn_params)
                record.notes.append(f"{len(added)} layer(s) without a bias got a zero one to correct: "
                                    + ", ".join(added[:6]))
                encodings = derive_encodings(work, stats, plan)
        analytic = step == "bias-correction" and options["method"] == "analytic"
        layer_data = None if analytic else _layer_data(work, encodings, data, options, providers)
        try:
            outcome = _data_step(step, work, encodings, layer_data, options, record, progress)
        finally:
            if layer_data is not None:
                layer_data.close()
    record.seconds = time.perf_counter() - started
    return outcome


def _data_step(step, index, encodings, layer_data, options, record, progress) -> StepOutcome:
    if step == "seq-mse":
        frozen, results, skipped = seq_mse(index, encodings, layer_data, int(options["candidates"]), progress)
        if results:
            before = sum(r.mse_before for r in results) / len(results)
            after = sum(r.mse_after for r in results) / len(results)
            record.notes.append(f"weight ranges chosen for {len(results)} layer(s) on {layer_data.samples} samples; "
                                f"mean layer output MSE {before:.3g} -> {after:.3g}")
        record.notes += _skipped(skipped)
        return StepOutcome(record, index, frozen=frozen)
    if step == "adaround":
        ada = AdaroundOptions(iterations=int(options["iterations"]), reg_param=float(options["reg_param"]))
        values, frozen, results, skipped = adaround(index, encodings, layer_data, ada, progress)
        if results:
            flipped = sum(r.flipped for r in results)
            total = sum(r.weights for r in results)
            record.notes.append(f"rounding learned for {len(results)} layer(s) on {layer_data.samples} samples "
                                f"({ada.iterations} iterations): {flipped} of {total} weights round the other way")
            record.notes += [f"{r.layer}: layer output MSE {r.nearest_mse:.3g} (nearest) -> {r.adaround_mse:.3g}"
                             for r in results[:8]]
        record.notes += _skipped(skipped)
        return StepOutcome(record, index.with_ptq_values(values), frozen=frozen)
    values, results, skipped = bias_correction(index, encodings, layer_data, str(options["method"]), progress)
    if results:
        source = "BatchNormalization statistics" if layer_data is None else f"{layer_data.samples} samples"
        record.notes.append(f"biases of {len(results)} layer(s) corrected ({options['method']}, "
                            f"{source}); largest mean shift removed: "
                            f"{max(r.shift for r in results):.3g} ({max(results, key=lambda r: r.shift).layer})")
    record.notes += _skipped(skipped)
    return StepOutcome(record, index.with_ptq_values(values))
