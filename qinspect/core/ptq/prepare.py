"""Open a model as a target runs it: the target's placement, and BatchNormalization folded first.

`prepare_model` is how the window, the command line and scripts open a model for a target. The
index it returns is of the transformed model (its `path` is still the file the user chose), so
statistics, encodings, the table and the exports all refer to the weights the target really has.
"""
from __future__ import annotations

import os

import onnx

from ..graph.model import ModelIndex, load_model
from ..targets.profiles import Target, get_target
from .bn_fold import fold_batchnorms


def prepare_model(source: str | os.PathLike | onnx.ModelProto, target: str | Target | None = None) -> ModelIndex:
    """Load, check and index `source` for `target` (the default target when None). The index's
    `bn_params` hold what folding learned of each folded layer's output (|gamma|, beta)."""
    target = get_target(target)
    bn_params: dict = {}

    def fold(model: onnx.ModelProto, data_dir: str | None) -> tuple[onnx.ModelProto, list[str]]:
        if not any(n.op_type == "BatchNormalization" for n in model.graph.node):
            return model, []
        folded, report = fold_batchnorms(model, data_dir)
        bn_params.update(report.bn_params)
        return folded, report.notes()

    index = load_model(source, placement=target.placement, transform=fold if target.fold_batchnorm else None)
    index.bn_params = bn_params
    return index
