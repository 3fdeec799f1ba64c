"""`EagerQuantizer`: eager mode (`execution_mode="eager"`), for models `torch.export` rejects.

The model stays an `nn.Module`. Which tensors get which spec, by the palettizer's resolution
(`config.trace` + `config.resolver`: module configs inherited by children, op names
`<module>.<function>`, op types from the function called):

- weights of the ops a forward of the example inputs calls (linear, convolutions, transposed
  convolutions, nn.MultiheadAttention's projections, functional calls included) and tensors
  named by `module_state_spec`: a fake-quantize parametrization each (weights decoded by a
  parametrization, i.e. palettized ones, are not model tensors to the trace: left alone);
- activations of standard op modules (nn.Linear, nn.Conv*, nn.ConvTranspose*, nn.Embedding,
  nn.MultiheadAttention), whose inputs and outputs are the op's: `op_input_spec` by argument
  position, `op_output_spec` on the (first) output, through forward hooks; the
  `module_input_spec` / `module_output_spec` of any matched module the same way. Activation
  specs reaching an op that is called functionally raise (eager mode cannot place them).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from coreai_opt_gpu.config.resolver import module_configs, resolve_states
from coreai_opt_gpu.config.spec import CompressionTargetTensor
from coreai_opt_gpu.config.trace import OpCall, static_ops, trace_ops
from coreai_opt_gpu.export import ExportBackend
from coreai_opt_gpu.quantization.export_params import (
    coreai_activation_params,
    coreai_weight_tensors,
    torch_qdq_pair,
)
from coreai_opt_gpu.quantization.qdq import QuantizedWeight
from coreai_opt_gpu.quantization.spec import (
    PerBlockGranularity,
    PerChannelGranularity,
    QuantizationComponentFactory,
    QuantizationSpec,
)
from coreai_opt_gpu.quantization.spec.fake_quantize import FakeQuantizeImplBase

QUANTIZED_MARK = "_coreai_opt_gpu_quantized"
ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d, nn.Embedding, nn.MultiheadAttention,
)  # fmt: skip
# op type -> (per-channel axis, per-block axis) for weight granularities given axis=None
WEIGHT_AXES: dict[str, tuple[int, int]] = {
    **{op: (0, 1) for op in ("linear", "conv1d", "conv2d", "conv3d", "embedding")},
    **{op: (1, 0) for op in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")},
    "multi_head_attention_forward": (0, 1),
}
_NOT_FOUND = object()


def _lookup(specs: Any, key: Any) -> Any:
    if not specs:
        return _NOT_FOUND
    if key in specs:
        return specs[key]
    return specs.get("*", _NOT_FOUND)


def _warn_unplaced(specs: Any, placed: tuple[int, ...], where: str, why: str) -> None:
    """Warn for the specs (not None) of keys other than `placed` and "*": eager mode has
    nowhere to put them (graph mode places every position)."""
    unplaced = [key for key, spec in (specs or {}).items()
                if spec is not None and key != "*" and key not in placed]  # fmt: skip
    if unplaced:
        warnings.warn(
            f"{where}: keys {unplaced} are not applied in eager mode ({why}); use graph mode "
            f"(execution_mode='graph') to quantize them",
            UserWarning,
            stacklevel=4,
        )


def weight_axis_resolved(spec: QuantizationSpec, op_type: str, name: str) -> QuantizationSpec:
    """axis=None of a per-channel / per-block weight spec -> the op's default axis."""
    granularity = spec.granularity
    needs = isinstance(granularity, PerChannelGranularity) or (
        isinstance(granularity, PerBlockGranularity) and isinstance(granularity.block_size, int)
    )
    if not needs or granularity.axis is not None:
        return spec
    if op_type not in WEIGHT_AXES:
        raise ValueError(
            f"cannot resolve axis=None of the {granularity.type} spec for '{name}' (op "
            f"{op_type!r} has no default weight axis); give the axis explicitly"
        )
    per_channel, per_block = WEIGHT_AXES[op_type]
    axis = per_channel if isinstance(granularity, PerChannelGranularity) else per_block
    return spec.model_copy(update={"granularity": granularity.model_copy(update={"axis": axis})})


class ActivationQuantizers(nn.Module):
    """The fake quantizers (later: quantize/dequantize pairs) on a module's inputs, by
    position, and on its first output; the module's hooks call `quantize_inputs` /
    `quantize_output`. Called itself it returns its argument: a container such as
    nn.Sequential calls every child, this one included."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs = nn.ModuleDict()
        self.output: nn.Module | None = None

    def forward(self, x: Any) -> Any:
        return x

    def quantize_inputs(self, module: nn.Module, args: tuple) -> tuple:
        if not len(self.inputs):
            return args
        return tuple(
            self.inputs[str(i)](a) if str(i) in self.inputs and torch.is_tensor(a) else a
            for i, a in enumerate(args)
        )

    def quantize_output(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if self.output is None:
            return output
        if torch.is_tensor(output):
            return self.output(output)
        return (self.output(output[0]), *output[1:])


class EagerQuantizer:
    """Eager-mode quantization of `model` as `config` says (see the module docstring)."""

    def __init__(self, model: nn.Module, config: Any) -> None:
        self.model = model
        self.config = config
        self.by_module: dict[str, list[FakeQuantizeImplBase]] = {}
        self.seeded_by_example = False

    # --- prepare -------------------------------------------------------------------------------

    def prepare(self, example_inputs: tuple[Any, ...]) -> nn.Module:
        if not isinstance(example_inputs, tuple):
            raise TypeError(f"example_inputs must be a tuple, got {type(example_inputs).__name__}")
        model = self.model
        trace = trace_ops(model, example_inputs) if example_inputs else static_ops(model)
        choices = module_configs(self.config, model)
        self._quantize_weights(trace)
        modules = dict(model.named_modules())
        for call in trace.calls:
            if call.op_type is None or call.index:
                continue
            choice = choices.get(call.module_name)
            if choice is not None:
                self._quantize_op_activations(call, choice.config, modules[call.module_name])
        for name, choice in choices.items():
            config = choice.config
            if config.module_input_spec or config.module_output_spec:
                self._quantize_boundary(name, modules[name], config)
        model.register_buffer(QUANTIZED_MARK, torch.tensor(True), persistent=False)
        if example_inputs:
            self._observe(example_inputs)
        return model

    def _register(self, name: str, fake: FakeQuantizeImplBase) -> FakeQuantizeImplBase:
        if fake not in self.by_module.setdefault(name, []):
            self.by_module[name].append(fake)
        return fake

    def _quantize_weights(self, trace: Any) -> None:
        model = self.model
        resolved = resolve_states(self.config, model, trace)
        owners = {}
        for module_name, module in model.named_modules():
            for state, tensor in (
                *module.named_parameters(recurse=False),
                *module.named_buffers(recurse=False),
            ):
                owners.setdefault(id(tensor), (module_name, module, state))
        for key, state in resolved.items():
            module_name, module, name = owners[key]
            full = f"{module_name}.{name}" if module_name else name
            spec = weight_axis_resolved(state.spec, state.op_type, full)
            fake = QuantizationComponentFactory.create_fake_quantizer(
                spec, CompressionTargetTensor.WEIGHT
            )
            fake.tensor_fqn = full
            with torch.no_grad():
                fake(getattr(module, name))  # static weights: observed now
            fake.disable_observer()
            if fake.is_disabled():
                continue
            parametrize.register_parametrization(module, name, fake, unsafe=True)
            self._register(module_name, fake)

    def _quantizers(self, module: nn.Module) -> ActivationQuantizers:
        if not isinstance(getattr(module, "activation_quantizers", None), ActivationQuantizers):
            quantizers = ActivationQuantizers()
            module.add_module("activation_quantizers", quantizers)
            module.register_forward_pre_hook(quantizers.quantize_inputs)
            module.register_forward_hook(quantizers.quantize_output)
        return module.activation_quantizers

    def _activation(self, spec: QuantizationSpec, name: str) -> FakeQuantizeImplBase:
        granularity = spec.granularity
        if isinstance(granularity, (PerChannelGranularity, PerBlockGranularity)) and (
            granularity.axis is None
        ):
            raise ValueError(
                f"activation spec for {name}: {granularity.type} granularity needs an explicit "
                f"axis (activations have no default axis)"
            )
        fake = QuantizationComponentFactory.create_fake_quantizer(
            spec, CompressionTargetTensor.ACTIVATION
        )
        fake.tensor_fqn = name
        return fake

    def _quantize_op_activations(self, call: OpCall, config: Any, module: nn.Module) -> None:
        op_config = config
        for pattern, candidate in reversed(config.op_name_config.items()):
            if re.fullmatch(pattern, call.op_name):
                op_config = candidate
                break
        else:
            if call.op_type in config.op_type_config:
                op_config = config.op_type_config[call.op_type]
        inputs = op_config.op_input_spec
        outputs = op_config.op_output_spec
        active = any(s is not None for s in (*inputs.values(), *outputs.values()))
        if not active:
            return
        if not isinstance(module, ACTIVATION_MODULES):
            raise ValueError(
                f"eager mode cannot quantize the activations of {call.op_name} "
                f"({call.op_type} called inside {type(module).__name__}.forward): only the "
                f"inputs and outputs of {', '.join(c.__name__ for c in ACTIVATION_MODULES)} "
                f"modules; use graph mode, or disable op_input_spec / op_output_spec for it"
            )
        quantizers = self._quantizers(module)
        positions = (0, 1, 2) if isinstance(module, nn.MultiheadAttention) else (0,)
        kind = next(c.__name__ for c in ACTIVATION_MODULES if isinstance(module, c))
        _warn_unplaced(inputs, positions, f"op_input_spec of {call.op_name}",
                       f"nn.{kind} quantizes its inputs at positions "
                       f"{', '.join(map(str, positions))}")  # fmt: skip
        for position in positions:
            if isinstance(module, nn.Embedding):
                break  # integer indices
            spec = _lookup(inputs, position)
            if (
                spec is not _NOT_FOUND
                and spec is not None
                and str(position) not in quantizers.inputs
            ):
                name = f"{call.module_name}.input_{position}"
                quantizers.inputs[str(position)] = self._register(
                    call.module_name, self._activation(spec, name)
                )
        spec = _lookup(outputs, 0)
        if spec is not _NOT_FOUND and spec is not None and quantizers.output is None:
            fake = self._activation(spec, f"{call.module_name}.output_0")
            quantizers.output = self._register(call.module_name, fake)

    def _quantize_boundary(self, name: str, module: nn.Module, config: Any) -> None:
        quantizers = self._quantizers(module)
        for key, spec in config.module_input_spec.items():
            if key == "*" or spec is None:
                continue
            quantizers.inputs[str(key)] = self._register(
                name, self._activation(spec, f"{name}.input_{key}")
            )
        star = config.module_input_spec.get("*")
        if star is not None:
            raise ValueError(
                f"module_input_spec['*'] of {name!r}: eager mode quantizes module inputs by "
                f"position; give the positions (0, 1, ...)"
            )
        _warn_unplaced(config.module_output_spec, (0,), f"module_output_spec of {name!r}",
                       "eager mode quantizes a module's first output only")  # fmt: skip
        spec = _lookup(config.module_output_spec, 0)
        if spec is not _NOT_FOUND:
            quantizers.output = (
                None
                if spec is None
                else self._register(name, self._activation(spec, f"{name}.output_0"))
            )

    def _observe(self, example_inputs: tuple[Any, ...]) -> None:
        """One forward of the example inputs initializes the activation ranges (eval mode,
        no gradients), as in graph mode."""
        activations = [
            f for f in self.fake_quantizers()
            if f.quantization_target == CompressionTargetTensor.ACTIVATION
        ]  # fmt: skip
        for fake in activations:
            fake.enable_observer()
            fake.disable_fake_quant()
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            with torch.no_grad():
                self.model(*example_inputs)
        finally:
            for m, training in modes.items():
                m.train(training)
        for fake in activations:
            fake.disable_observer()
            fake.enable_fake_quant()
        self.seeded_by_example = True

    # --- modes ---------------------------------------------------------------------------------

    def fake_quantizers(self) -> list[FakeQuantizeImplBase]:
        unique = {id(m): m for m in self.model.modules() if isinstance(m, FakeQuantizeImplBase)}
        return list(unique.values())

    def modules_to_fake_quantizers(self) -> dict[str, list[FakeQuantizeImplBase]]:
        return self.by_module

    def reseed_activation_observers(self) -> None:
        if not self.seeded_by_example:
            return
        self.seeded_by_example = False
        for fake in self.fake_quantizers():
            if fake.quantization_target == CompressionTargetTensor.ACTIVATION:
                reseed = getattr(fake.qparams_calculator, "reseed_on_next_observation", None)
                if reseed is not None:
                    reseed()

    @contextmanager
    def _modes(self, training: bool) -> Iterator[None]:
        modes = {m: m.training for m in self.model.modules()}
        self.model.train(training)
        try:
            yield
        finally:
            for m, was in modes.items():
                m.train(was)

    @contextmanager
    def calibration_mode(self) -> Iterator[None]:
        self.reseed_activation_observers()
        for fake in self.fake_quantizers():
            fake.enable_observer()
            fake.enable_fake_quant(fake.quantization_target == CompressionTargetTensor.WEIGHT)
        try:
            with self._modes(training=False):
                yield
        finally:
            for fake in self.fake_quantizers():
                fake.disable_observer()
                fake.enable_fake_quant()

    @contextmanager
    def training_mode(self) -> Iterator[None]:
        self.reseed_activation_observers()
        for fake in self.fake_quantizers():
            fake.enable_observer()
            fake.enable_fake_quant()
        try:
            with self._modes(training=True):
                yield
        finally:
            for fake in self.fake_quantizers():
                fake.disable_observer()
                fake.enable_fake_quant()

    # --- finalize ------------------------------------------------------------------------------

    def finalize(self, model: nn.Module | None, backend: ExportBackend) -> nn.Module:
        model = self.model if model is None else model
        if not hasattr(model, QUANTIZED_MARK):
            raise RuntimeError(
                "the model is not prepared for quantization: call Quantizer.prepare first"
            )
        build = _coreai_builders() if backend == ExportBackend.CoreAI else None
        for module in model.modules():
            if parametrize.is_parametrized(module):
                for state in list(module.parametrizations.keys()):
                    chain = module.parametrizations[state]
                    if len(chain) == 1 and isinstance(chain[0], FakeQuantizeImplBase):
                        _finalize_weight(module, state, chain[0], build)
            quantizers = getattr(module, "activation_quantizers", None)
            if isinstance(quantizers, ActivationQuantizers):
                for key, fake in list(quantizers.inputs.items()):
                    quantizers.inputs[key] = _finalize_activation(fake, build)
                if isinstance(quantizers.output, FakeQuantizeImplBase):
                    quantizers.output = _finalize_activation(quantizers.output, build)
        delattr(model, QUANTIZED_MARK)
        return model


def _where(fake: FakeQuantizeImplBase) -> str:
    return f"fake quantizer of {fake.tensor_fqn}"


def _coreai_builders() -> dict[str, type]:
    try:
        from coreai_torch._compression.custom_layers import (
            ActivationDequantizeModule,
            ActivationQuantizeModule,
            WeightDequantizeModule,
        )
        from coreai_torch._compression.utils import wrap_for_parametrization
    except ImportError as err:
        raise ValueError(
            "backend=ExportBackend.CoreAI needs the optional coreai-torch package: "
            "pip install 'coreai-opt-gpu[coreai]'"
        ) from err
    return {
        "weight": wrap_for_parametrization(WeightDequantizeModule),
        "quantize": ActivationQuantizeModule,
        "dequantize": ActivationDequantizeModule,
    }


def _finalize_weight(
    module: nn.Module, state: str, fake: FakeQuantizeImplBase, build: dict[str, type] | None
) -> None:
    original = module.parametrizations[state].original
    dense = original.detach()
    if build is None:
        quantize, dequantize = torch_qdq_pair(fake, _where(fake))
        replacement: nn.Module = QuantizedWeight(quantize(dense), dequantize)
    else:
        weight = coreai_weight_tensors(fake, dense, _where(fake))
        replacement = build["weight"](
            quantized_data=weight.codes,
            scale=weight.scale,
            zero_point=weight.zero_point,
            minval=weight.minval,
            input_dtype=weight.input_dtype,
            **weight.extra,
        )
    parametrize.remove_parametrizations(module, state, leave_parametrized=False)
    empty = torch.empty(0, dtype=original.dtype, device=original.device)
    setattr(module, state, nn.Parameter(empty, requires_grad=False))
    parametrize.register_parametrization(module, state, replacement, unsafe=True)


def _finalize_activation(fake: FakeQuantizeImplBase, build: dict[str, type] | None) -> nn.Module:
    if build is None:
        return nn.Sequential(*torch_qdq_pair(fake, _where(fake)))
    if isinstance(fake.granularity, PerBlockGranularity) or fake.dtype == torch.float4_e2m1fn_x2:
        raise ValueError(
            f"Core AI export of activation {fake.tensor_fqn}: per-block and float4 activation "
            f"quantization are not supported; use per-tensor / per-channel or ExportBackend.Torch"
        )
    out = fake.export_dtype or torch.float32
    axis = fake.granularity.axis if isinstance(fake.granularity, PerChannelGranularity) else None
    scale, zero_point, minval = coreai_activation_params(fake, axis, _where(fake))
    axis = 0 if axis is None else axis  # coreai-torch's modules take an axis either way
    quantize = build["quantize"](scale, fake.dtype, zero_point=zero_point, minval=minval, axis=axis)
    dequantize = build["dequantize"](
        scale,
        zero_point=zero_point,
        minval=minval,
        axis=axis,
        input_dtype=None if fake.dtype.is_floating_point else fake.dtype,
        output_dtype=out,
    )
    return nn.Sequential(quantize, dequantize)
