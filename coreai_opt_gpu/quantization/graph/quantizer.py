"""`GraphQuantizer`: graph mode (the default) behind `coreai_opt_gpu.quantization.Quantizer`.

prepare -> `graph.prepare.prepare_graph` (an `fx.GraphModule` with fake-quantize modules);
calibration / training toggle observers and fake quantization as coreai_opt's graph mode
does; finalize -> `graph.finalize.finalize_graph`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import fx, nn
from torch.fx.graph_module import _USER_PRESERVED_ATTRIBUTES_KEY
from torchao.quantization.pt2e import allow_exported_model_train_eval

from coreai_opt_gpu.config.spec import CompressionTargetTensor
from coreai_opt_gpu.export import ExportBackend
from coreai_opt_gpu.quantization.graph import ops
from coreai_opt_gpu.quantization.graph.finalize import finalize_graph
from coreai_opt_gpu.quantization.graph.prepare import (
    fake_quantize_nodes,
    prepare_graph,
    set_exported_mode,
)
from coreai_opt_gpu.quantization.spec.fake_quantize import FakeQuantizeImplBase

QUANTIZED_MARK = "_coreai_opt_gpu_quantized"


@contextmanager
def exported_mode(model: fx.GraphModule, training: bool) -> Iterator[None]:
    """The exported model in train or eval mode inside the block, its mode restored after."""
    was_training = model.training
    set_exported_mode(model, training)
    try:
        yield
    finally:
        set_exported_mode(model, was_training)


class GraphQuantizer:
    """Graph-mode quantization of `model` as `config` says (see the package docs)."""

    def __init__(self, model: nn.Module, config: Any) -> None:
        self.model: nn.Module = model
        self.original = model
        self.config = config
        self.annotator: Any = None
        self.seeded_by_example = False

    # --- prepare -------------------------------------------------------------------------------

    def prepare(
        self, example_inputs: tuple[Any, ...], dynamic_shapes: Any, export_with_no_grad: bool
    ) -> fx.GraphModule:
        if not isinstance(example_inputs, tuple):
            raise TypeError(f"example_inputs must be a tuple, got {type(example_inputs).__name__}")
        if not example_inputs:
            raise ValueError("example_inputs cannot be empty: graph mode exports the model")
        preserved = self._preserved_attributes()
        prepared, self.annotator = prepare_graph(
            self.original, self.config, example_inputs, dynamic_shapes, export_with_no_grad
        )
        if self.annotator.intrinsic_overrides:
            warnings.warn(
                f"outputs of {self.annotator.intrinsic_overrides} take the range their op "
                f"implies (relu: asymmetric, float_range [0, None]; sigmoid: [0, 1]; tanh: "
                f"[-1, 1]; ...) instead of the configured scheme / float_range, as coreai_opt "
                f"does",
                UserWarning,
                stacklevel=3,
            )
        self._attach(prepared, preserved)
        prepared.register_buffer(QUANTIZED_MARK, torch.tensor(True), persistent=False)
        self.model = prepared
        self.seeded_by_example = True
        return prepared

    def _preserved_attributes(self) -> dict[str, Any]:
        found = {}
        for name in self.config.preserved_attributes or ():
            if not hasattr(self.original, name):
                warnings.warn(
                    f"preserved_attributes: the model ({type(self.original).__name__}) has no "
                    f"attribute {name!r}; it is skipped",
                    UserWarning,
                    stacklevel=4,
                )
                continue
            found[name] = getattr(self.original, name)
        return found

    @staticmethod
    def _attach(model: fx.GraphModule, preserved: dict[str, Any]) -> None:
        if not preserved:
            return
        model.meta[_USER_PRESERVED_ATTRIBUTES_KEY] = copy.deepcopy(preserved)
        for name, value in preserved.items():
            setattr(model, name, value)

    # --- modes ---------------------------------------------------------------------------------

    def fake_quantizers(self) -> list[FakeQuantizeImplBase]:
        """The fake quantizers of the prepared model (shared ones once)."""
        return list({id(m): m for _, m in fake_quantize_nodes(self.model)}.values())

    def reseed_activation_observers(self) -> None:
        """The first calibration / training observation replaces the range prepare's example
        input seeded, for running-range (moving average, global min-max) activations."""
        if not self.seeded_by_example:
            return
        self.seeded_by_example = False
        for fake in self.fake_quantizers():
            if fake.quantization_target == CompressionTargetTensor.ACTIVATION:
                reseed = getattr(fake.qparams_calculator, "reseed_on_next_observation", None)
                if reseed is not None:
                    reseed()

    @contextmanager
    def calibration_mode(self) -> Iterator[None]:
        """Observers on; weights fake-quantized, activations not (their observers see the
        quantized weights' effect); eval mode. On exit: observers off, all fake quant on."""
        self.reseed_activation_observers()
        for fake in self.fake_quantizers():
            fake.enable_observer()
            weight = fake.quantization_target == CompressionTargetTensor.WEIGHT
            fake.enable_fake_quant(weight)
        try:
            with exported_mode(self.model, training=False):
                yield
        finally:
            for fake in self.fake_quantizers():
                fake.disable_observer()
                fake.enable_fake_quant()

    @contextmanager
    def training_mode(self) -> Iterator[None]:
        """Observers and fake quantization on, train mode; on exit observers off, fake quant
        on, the mode restored."""
        self.reseed_activation_observers()
        for fake in self.fake_quantizers():
            fake.enable_observer()
            fake.enable_fake_quant()
        try:
            with exported_mode(self.model, training=True):
                yield
        finally:
            for fake in self.fake_quantizers():
                fake.disable_observer()
                fake.enable_fake_quant()

    def modules_to_fake_quantizers(self) -> dict[str, list[FakeQuantizeImplBase]]:
        """Original module name -> the fake quantizers inserted for it: each quantizer goes
        to the module of the highest-priority annotated node next to it."""
        rank = self.annotator.node_ranks if self.annotator is not None else {}
        worst = (len(rank) + 1,)
        mapping: dict[str, list[FakeQuantizeImplBase]] = {}
        for node, fake in fake_quantize_nodes(self.model):
            neighbors = [n for n in (*node.users, *node.args) if isinstance(n, fx.Node)]
            neighbors.sort(key=lambda n: rank.get(n, worst))
            for neighbor in neighbors:
                module = ops.source_module(neighbor)
                if module is not None:
                    module = self.annotator.canonical.get(module, module)
                    if fake not in mapping.setdefault(module, []):
                        mapping[module].append(fake)
                    break
        return mapping

    # --- finalize ------------------------------------------------------------------------------

    def finalize(self, model: nn.Module | None, backend: ExportBackend) -> fx.GraphModule:
        model = self.model if model is None else model
        if not isinstance(model, fx.GraphModule):
            raise TypeError(
                f"graph-mode finalize takes the prepared torch.fx.GraphModule, got "
                f"{type(model).__name__}"
            )
        if not hasattr(model, QUANTIZED_MARK):
            raise RuntimeError(
                "the model is not prepared for quantization: call Quantizer.prepare first"
            )
        preserved = model.meta.get(_USER_PRESERVED_ATTRIBUTES_KEY, {})
        finalized = finalize_graph(model, backend)
        delattr(finalized, QUANTIZED_MARK)
        self._attach(finalized, preserved)
        allow_exported_model_train_eval(finalized)
        return finalized
