"""`Quantizer`: fake quantization of weights (parametrizations) and activations (hooks)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from coreai_opt_gpu.config.module_states import module_states
from coreai_opt_gpu.config.resolver import SpecSite, resolve_spec, unmatched_module_keys
from coreai_opt_gpu.export import ExportBackend
from coreai_opt_gpu.quantization.config import QuantizerConfig
from coreai_opt_gpu.quantization.fake_quantize import FakeQuantize

QUANTIZED_MARK = "_coreai_opt_gpu_quantized"
INPUT_QUANTIZER = "input_quantizer"
OUTPUT_QUANTIZER = "output_quantizer"


def _first_tensor_hook(quantizer: FakeQuantize):
    def quantize_output(module: nn.Module, args: tuple, output):
        if isinstance(output, torch.Tensor):
            return quantizer(output)
        return (quantizer(output[0]), *output[1:])

    return quantize_output


def _input_hook(quantizer: FakeQuantize):
    def quantize_input(module: nn.Module, args: tuple):
        return (quantizer(args[0]), *args[1:]) if args else args

    return quantize_input


class Quantizer:
    """Inserts fake quantization as the config says, per op of each module: weights
    (`op_state_spec`) through parametrizations, the op's first input (`op_input_spec`) and
    output (`op_output_spec`) through forward hooks. Ops are those the palettizer knows
    (linear, convolutions, transposed convolutions, embedding, attention projections)."""

    def __init__(self, model: nn.Module, config: QuantizerConfig | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.config = config if config is not None else QuantizerConfig()
        self.activation_quantizers: dict[str, FakeQuantize] = {}
        self.weight_quantizers: dict[str, FakeQuantize] = {}
        self.calibrated = False

    def prepare(self, example_inputs: tuple = ()) -> nn.Module:
        """Insert the quantizers and return the model. Weight ranges are observed now
        (static); activation ranges during `calibration_mode` (before it, activations pass
        through unchanged). example_inputs: accepted for coreai_opt compatibility."""
        if hasattr(self.model, QUANTIZED_MARK):
            raise RuntimeError("the model is already prepared for quantization")
        unmatched = unmatched_module_keys(self.config, self.model)
        if unmatched:
            warnings.warn(
                f"config entries that match no module of the model: {unmatched}", stacklevel=2
            )
        for name, module in list(self.model.named_modules()):
            states = module_states(module)
            if not states:
                continue
            op_type = states[0][0]
            for _, state in states:
                spec = resolve_spec(self.config, SpecSite(name, type(module), op_type, name, state))
                if spec is not None:
                    self._quantize_weight(name, module, state, spec)
            for kind, attribute in (("input", INPUT_QUANTIZER), ("output", OUTPUT_QUANTIZER)):
                site = SpecSite(name, type(module), op_type, name, "0", kind=kind)
                spec = resolve_spec(self.config, site)
                if spec is None:
                    continue
                quantizer = FakeQuantize(spec, default_axis=1)  # activations: [batch, channel]
                quantizer.observing = False
                module.add_module(attribute, quantizer)
                if kind == "input":
                    module.register_forward_pre_hook(_input_hook(quantizer))
                else:
                    module.register_forward_hook(_first_tensor_hook(quantizer))
                self.activation_quantizers[f"{name}.{kind}"] = quantizer
        self.model.register_buffer(QUANTIZED_MARK, torch.tensor(True), persistent=False)
        return self.model

    def _quantize_weight(self, name: str, module: nn.Module, state: str, spec) -> None:
        quantizer = FakeQuantize(spec, default_axis=0)
        with torch.no_grad():
            quantizer.observe(getattr(module, state))  # static: the weight as it is now
        quantizer.observing = False
        parametrize.register_parametrization(module, state, quantizer, unsafe=True)
        self.weight_quantizers[f"{name}.{state}" if name else state] = quantizer

    @contextmanager
    def calibration_mode(self) -> Iterator[Quantizer]:
        """Activation quantizers observe the batches run inside the block (moving-average
        specs start from the first of them)."""
        if not hasattr(self.model, QUANTIZED_MARK):
            raise RuntimeError("calibration needs a prepared model: call prepare first")
        for quantizer in self.activation_quantizers.values():
            quantizer.observing = True
        try:
            yield self
        finally:
            for quantizer in self.activation_quantizers.values():
                quantizer.observing = False
        self.calibrated = True

    def finalize(
        self, model: nn.Module | None = None, backend: ExportBackend = ExportBackend.Torch
    ) -> nn.Module:
        """Freeze the quantization parameters (ExportBackend.Torch: the fake-quantized model
        with fixed ranges) and clear the prepared mark."""
        model = self.model if model is None else model
        if not hasattr(model, QUANTIZED_MARK):
            raise RuntimeError("the model is not prepared for quantization: call prepare first")
        backend = ExportBackend(backend)
        if backend != ExportBackend.Torch:
            raise ValueError(
                f"backend={backend.name} is not available yet for quantization; "
                f"available: ExportBackend.Torch"
            )
        missing = sorted(n for n, q in self.activation_quantizers.items() if not q.initialized)
        if missing:
            raise RuntimeError(
                f"activations never observed (run calibration_mode first): {missing[:5]}"
            )
        delattr(model, QUANTIZED_MARK)
        return model
