"""Graph-mode prepare: `torch.export` the model, annotate it with `ConfigAnnotator`, let
torchao's `prepare_pt2e` insert our fake quantizers, and initialize them.

1. Export in eval mode (modes restored afterwards), under no_grad unless asked otherwise.
2. `prepare_pt2e`: folds a BatchNorm that directly follows a conv / linear into its weight
   (torchao's fold, on the graph's own copies), annotates, inserts the fake-quantize modules
   (`activation_post_process_<i>`, shared instances under several names).
3. Weight fake quantizers learn the tensor they read (`tensor_fqn`); one forward of the
   example inputs with observers on and fake quantization off initializes every range (eval
   mode, no gradients); quantizers whose tensor does not fit the block size are removed
   (they warned); then fake quantization on, observers off.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import fx, nn
from torchao.quantization.pt2e import (
    allow_exported_model_train_eval,
    move_exported_model_to_eval,
    move_exported_model_to_train,
)
from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

from coreai_opt_gpu.quantization.graph.annotator import ConfigAnnotator
from coreai_opt_gpu.quantization.spec.fake_quantize import FakeQuantizeImplBase


def fake_quantize_nodes(model: fx.GraphModule) -> list[tuple[fx.Node, FakeQuantizeImplBase]]:
    """(call_module node, module) for every fake quantizer in the graph, in graph order."""
    modules = dict(model.named_modules(remove_duplicate=False))
    found = []
    for node in model.graph.nodes:
        if node.op == "call_module":
            module = modules.get(str(node.target))
            if isinstance(module, FakeQuantizeImplBase):
                found.append((node, module))
    return found


@contextmanager
def eval_modes(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode inside the block, each module's mode restored after."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.train(training)


MODE_DEPENDENT_OPS = (
    torch.ops.aten.dropout,
    torch.ops.aten.feature_dropout,
    torch.ops.aten.batch_norm,
    torch.ops.aten._native_batch_norm_legit,
    torch.ops.aten._native_batch_norm_legit_no_training,
)


def set_exported_mode(model: fx.GraphModule, training: bool) -> None:
    """Train or eval mode for an exported model: torchao rewrites its dropout / BatchNorm
    ops (skipped when the graph has none: the rewrite re-exports its patterns, seconds per
    call), and every module's `training` flag follows."""
    has_mode_ops = any(
        getattr(n.target, "overloadpacket", None) in MODE_DEPENDENT_OPS for n in model.graph.nodes
    )
    if has_mode_ops:
        (move_exported_model_to_train if training else move_exported_model_to_eval)(model)
    nn.Module.train(model, training)


def export_graph(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    dynamic_shapes: Any,
    export_with_no_grad: bool,
) -> fx.GraphModule:
    """The model as an aten GraphModule (eval mode); RuntimeError naming what to try else."""
    grad = torch.no_grad() if export_with_no_grad else nullcontext()
    try:
        with eval_modes(model), grad:
            program = torch.export.export(model, example_inputs, dynamic_shapes=dynamic_shapes)
            try:
                return program.module(check_guards=False)  # torch >= 2.9
            except TypeError:
                return program.module()
    except Exception as err:
        raise RuntimeError(
            f"Quantizer.prepare: torch.export.export failed ({type(err).__name__}: {err}). "
            f"Graph mode needs an exportable model; for one that is not (data-dependent control "
            f"flow, ...) use QuantizerConfig(execution_mode='eager')."
        ) from err


def record_tensor_names(model: fx.GraphModule) -> None:
    """Name, on each fake quantizer reading a parameter or buffer, the tensor it reads."""
    for node, module in fake_quantize_nodes(model):
        source = node.args[0]
        if module.tensor_fqn != type(module).tensor_fqn or not isinstance(source, fx.Node):
            continue  # a shared quantizer keeps the name of the first tensor it reads
        module.tensor_fqn = str(source.target) if source.op == "get_attr" else source.name


def remove_fake_quantize_node(model: fx.GraphModule, node: fx.Node) -> None:
    """Bypass and erase one fake-quantize node; drop its module once no node uses it."""
    node.replace_all_uses_with(node.args[0])
    target = str(node.target)
    model.graph.erase_node(node)
    if not any(n.op == "call_module" and str(n.target) == target for n in model.graph.nodes):
        delattr(model, target)


def prepare_graph(
    model: nn.Module,
    config: Any,
    example_inputs: tuple[Any, ...],
    dynamic_shapes: Any = None,
    export_with_no_grad: bool = True,
) -> tuple[fx.GraphModule, ConfigAnnotator]:
    """The prepared GraphModule (in the model's train/eval mode) and the annotator used."""
    training = model.training
    graph = export_graph(model, example_inputs, dynamic_shapes, export_with_no_grad)
    annotator = ConfigAnnotator(config, model)
    with warnings.catch_warnings():
        # torchao's fold warns about deprecated internals we do not call ourselves
        warnings.filterwarnings("ignore", category=FutureWarning, module="torchao")
        prepared = prepare_pt2e(graph, annotator)
    allow_exported_model_train_eval(prepared)
    record_tensor_names(prepared)
    for _, module in fake_quantize_nodes(prepared):
        module.disable_fake_quant()
        module.enable_observer()
    set_exported_mode(prepared, False)
    with torch.no_grad():
        prepared(*example_inputs)
    for node, module in fake_quantize_nodes(prepared):
        if module.is_disabled():
            remove_fake_quantize_node(prepared, node)
    prepared.graph.eliminate_dead_code()
    prepared.recompile()
    for _, module in fake_quantize_nodes(prepared):
        module.enable_fake_quant()
        module.disable_observer()
    set_exported_mode(prepared, training)
    return prepared, annotator
