"""`Quantizer`: coreai_opt 0.3.0's quantizer API over our graph and eager modes.

Graph mode (`QuantizerConfig.execution_mode`, the default) exports the model and returns an
`fx.GraphModule` with fake-quantize modules (`quantization.graph`); eager mode keeps the
`nn.Module` (`quantization.eager`). Both run the fused fake-quantize op. This class adds what
is common: the QAT schedule (`step()`), the observer / fake-quant toggles, argument checks
and the backend dispatch of `finalize`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from typing import Any

from torch import nn

from coreai_opt_gpu.config.base import ALL_TENSORS
from coreai_opt_gpu.config.resolver import module_configs, unmatched_module_keys
from coreai_opt_gpu.export import ExportBackend
from coreai_opt_gpu.quantization.config import (
    ExecutionMode,
    InvalidExecutionModeError,
    QATSchedule,
    QuantizerConfig,
)
from coreai_opt_gpu.quantization.spec.fake_quantize import FakeQuantizeImplBase

PALETTIZER_MARK = "_coreai_opt_gpu_prepared"
QUANTIZED_MARK = "_coreai_opt_gpu_quantized"
SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d, nn.Embedding, nn.MultiheadAttention,
)  # fmt: skip


def _check_keys(config: QuantizerConfig) -> None:
    """coreai_opt's graph-mode limits, for both modes: input/output specs keyed by integer
    index or "*", outputs by 0 or "*"."""
    modules = [("global_config", config.global_config)]
    modules += [(f"module_type_configs[{k!r}]", v) for k, v in config.module_type_configs.items()]
    modules += [(f"module_name_configs[{k!r}]", v) for k, v in config.module_name_configs.items()]
    for where, module in modules:
        levels = [(where, module)]
        levels += [(f"{where}.op_name_config[{k!r}]", v) for k, v in module.op_name_config.items()]
        levels += [(f"{where}.op_type_config[{k!r}]", v) for k, v in module.op_type_config.items()]
        for place, level in levels:
            fields = ["op_input_spec", "op_output_spec"]
            if place == where:
                fields += ["module_input_spec", "module_output_spec"]
            for field in fields:
                for key in getattr(level, field):
                    if isinstance(key, str) and key != ALL_TENSORS:
                        raise NotImplementedError(
                            f"{place}.{field}: only integer indices or '*' name inputs and "
                            f"outputs, got {key!r}"
                        )
                    if field == "op_output_spec" and key not in (ALL_TENSORS, 0):
                        raise NotImplementedError(
                            f"{place}.op_output_spec: ops have one quantizable output; use 0 "
                            f"or '*', got {key!r}"
                        )


class Quantizer:
    """Fake-quantizes a model's weights and activations as `config` says, calibrates or
    fine-tunes it, and finalizes it for Core AI (default) or plain PyTorch.

    Args:
        model: the model to quantize.
        config: the quantization config; None means `QuantizerConfig()` (int8 weights per
            output channel, int8 activations per tensor, graph mode).
    """

    def __init__(self, model: nn.Module, config: QuantizerConfig | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        config = QuantizerConfig() if config is None else config
        if not isinstance(config, QuantizerConfig):
            raise TypeError(f"config must be a QuantizerConfig, got {type(config).__name__}")
        _check_keys(config)
        self._config = config
        self._execution_mode = config.execution_mode
        if self._execution_mode == ExecutionMode.GRAPH:
            from coreai_opt_gpu.quantization.graph.quantizer import GraphQuantizer

            self._quantizer: Any = GraphQuantizer(model, config)
        elif self._execution_mode == ExecutionMode.EAGER:
            from coreai_opt_gpu.quantization.eager import EagerQuantizer

            self._quantizer = EagerQuantizer(model, config)
        else:  # pragma: no cover - the config validates the mode
            raise InvalidExecutionModeError(self._execution_mode)
        self._original = model
        self._prepared = False
        self._finalized = False
        self._step_count = 0
        self._in_training_mode = False
        self._schedules: dict[FakeQuantizeImplBase, QATSchedule] = {}
        self._module_to_fqs: dict[str, list[FakeQuantizeImplBase]] = {}

    @classmethod
    def supported_modules(cls) -> tuple[type[nn.Module], ...]:
        """Module types whose weights and activations both modes quantize."""
        return SUPPORTED_MODULES

    @property
    def model(self) -> nn.Module:
        """The model: the original before prepare, the prepared (then finalized) one after."""
        return self._quantizer.model

    # --- prepare -------------------------------------------------------------------------------

    def prepare(
        self,
        example_inputs: tuple[Any, ...],
        dynamic_shapes: dict[str, Any] | tuple[Any] | list[Any] | None = None,
        export_with_no_grad: bool = True,
    ) -> nn.Module:
        """Insert fake quantization and return the prepared model: an `fx.GraphModule` in
        graph mode, the model itself in eager mode. Weights are observed now; activations
        from one forward of `example_inputs` (run `calibration_mode` over real data next;
        its first batch replaces that seed). `dynamic_shapes` / `export_with_no_grad` are
        `torch.export`'s (graph mode; eager mode warns that it ignores them)."""
        if self._prepared or self._finalized or hasattr(self._original, QUANTIZED_MARK):
            raise RuntimeError(
                "Model has already been prepared. Cannot re-prepare a prepared model."
            )
        if hasattr(self._original, PALETTIZER_MARK):
            raise RuntimeError(
                "the model is prepared by KMeansPalettizer: call palettizer.finalize(...) "
                "before quantizing it"
            )
        unmatched = unmatched_module_keys(self._config, self._original)
        if unmatched:
            warnings.warn(
                f"config entries that match no module of the model: {unmatched}", stacklevel=2
            )
        choices = module_configs(self._config, self._original)
        if self._execution_mode == ExecutionMode.EAGER:
            if dynamic_shapes is not None:
                warnings.warn(
                    "dynamic_shapes is only supported in graph mode and is ignored",
                    UserWarning,
                    stacklevel=2,
                )
            if not export_with_no_grad:
                warnings.warn(
                    "export_with_no_grad is only supported in graph mode and is ignored",
                    UserWarning,
                    stacklevel=2,
                )
            prepared = self._quantizer.prepare(example_inputs)
        else:
            prepared = self._quantizer.prepare(example_inputs, dynamic_shapes, export_with_no_grad)
        self._prepared = True
        self._module_to_fqs = self._quantizer.modules_to_fake_quantizers()
        if not any(self._module_to_fqs.values()):
            warnings.warn(
                f"prepare quantized nothing in this {type(self._original).__name__}: the config "
                "places no fake quantizer (check op_state_spec / module_state_spec tensor names, "
                "op and module names and types; config.build_module_config_dict(model) shows "
                "what each module gets)",
                UserWarning,
                stacklevel=2,
            )
        for name, fakes in self._module_to_fqs.items():
            choice = choices.get(name)
            schedule = None if choice is None else choice.config.qat_schedule
            if schedule is None:
                continue
            for fake in fakes:
                if fake in self._schedules:
                    warnings.warn(
                        f"a fake quantizer of {name!r} is shared with a module that already "
                        f"has a qat_schedule; the existing schedule is kept",
                        UserWarning,
                        stacklevel=2,
                    )
                else:
                    self._schedules[fake] = schedule
        return prepared

    def _require_prepared(self, what: str) -> None:
        if not self._prepared:
            raise RuntimeError(f"{what} needs a prepared model: call prepare first")

    def _check_model(self, model: nn.Module | None) -> None:
        if model is not None and model is not self._quantizer.model:
            raise ValueError(
                "model must be the one prepare returned (or None for it); a Quantizer "
                "manages one model"
            )

    # --- calibration and training --------------------------------------------------------------

    @contextmanager
    def calibration_mode(self, model: nn.Module | None = None) -> Iterator[None]:
        """Observers on, weights fake-quantized, activations not (their observers then see
        the quantized weights' effect), eval mode; on exit observers off and fake
        quantization on everywhere. The first observed batch replaces the range prepare's
        example input gave running-range (moving average, global min-max) activations."""
        self._require_prepared("calibration_mode")
        self._check_model(model)
        if self._in_training_mode:
            raise RuntimeError("calibration_mode cannot be entered inside training_mode")
        with self._quantizer.calibration_mode():
            yield

    @contextmanager
    def training_mode(self, model: nn.Module | None = None) -> Iterator[None]:
        """Quantization-aware training: train mode, observers and fake quantization on (or
        as the QAT schedules say at the current step count); on exit observers off, fake
        quantization on, modes restored. Not re-entrant; the step count carries over."""
        self._require_prepared("training_mode")
        self._check_model(model)
        if self._in_training_mode:
            raise RuntimeError(
                "Cannot enter training_mode() while already inside a training_mode() context. "
                "Nested training_mode() calls are not supported."
            )
        self._in_training_mode = True
        try:
            with self._quantizer.training_mode():
                self._apply_schedules()
                yield
        finally:
            self._in_training_mode = False

    def step(self) -> None:
        """Advance the QAT schedules by one step (inside training_mode only)."""
        if not self._in_training_mode:
            raise RuntimeError("step() must be called inside a training_mode() context.")
        self._step_count += 1
        if not self._schedules:
            warnings.warn(
                "step() was called but no qat_schedule is configured on any module; it has no "
                "effect. Configure a QATSchedule on a ModuleQuantizerConfig to use it.",
                UserWarning,
                stacklevel=2,
            )
            return
        self._apply_schedules()

    def _apply_schedules(self) -> None:
        for fake, schedule in self._schedules.items():
            state = schedule._compute_state(self._step_count)
            fake.enable_observer(state.obs_on)
            fake.enable_fake_quant(state.fq_on)

    # --- toggles -------------------------------------------------------------------------------

    def _fake_quantizers_of(self, module: nn.Module | None) -> list[FakeQuantizeImplBase]:
        if self._schedules:
            raise RuntimeError(
                "Enable/disable APIs for observers or fake quantization cannot be used with a "
                "qat_schedule configured; use step() to drive the schedule."
            )
        self._require_prepared("toggling observers / fake quantization")
        if module is None:
            return self._quantizer.fake_quantizers()
        prefix = None
        for name, candidate in self._original.named_modules():
            if candidate is module:
                prefix = name
        for name, candidate in self._quantizer.model.named_modules():
            if candidate is module:
                prefix = name
        if prefix is None:
            raise ValueError(f"Module {type(module).__name__} is not a submodule of the model.")
        found: dict[int, FakeQuantizeImplBase] = {}
        for name, fakes in self._module_to_fqs.items():
            if not prefix or name == prefix or name.startswith(prefix + "."):
                for fake in fakes:
                    found[id(fake)] = fake
        return list(found.values())

    def enable_observer(self, module: nn.Module | None = None) -> None:
        """Turn observers on, for the whole model or one module (and its children)."""
        for fake in self._fake_quantizers_of(module):
            fake.enable_observer()

    def disable_observer(self, module: nn.Module | None = None) -> None:
        """Turn observers off, for the whole model or one module (and its children)."""
        for fake in self._fake_quantizers_of(module):
            fake.disable_observer()

    def enable_fake_quant(self, module: nn.Module | None = None) -> None:
        """Turn fake quantization on, for the whole model or one module (and its children)."""
        for fake in self._fake_quantizers_of(module):
            fake.enable_fake_quant()

    def disable_fake_quant(self, module: nn.Module | None = None) -> None:
        """Turn fake quantization off, for the whole model or one module (and children)."""
        for fake in self._fake_quantizers_of(module):
            fake.disable_fake_quant()

    # --- finalize ------------------------------------------------------------------------------

    def finalize(
        self,
        model: nn.Module | None = None,
        backend: ExportBackend = ExportBackend.CoreAI,
        *,
        mmap_dir: str | PathLike[str] | None = None,
    ) -> nn.Module:
        """Replace fake quantization by real quantization: Core AI (default) with
        coreai-torch's quantize / dequantize / constexpr_blockwise_shift_scale ops (needs
        `pip install 'coreai-opt-gpu[coreai]'`), Torch with plain-PyTorch modules that
        `torch.export` accepts (integer codes stored). Returns the finalized model."""
        backend = ExportBackend(backend)
        if mmap_dir is not None:
            if backend != ExportBackend.CoreAI:
                raise ValueError(
                    f"mmap_dir is only supported with backend=ExportBackend.CoreAI, got "
                    f"backend={backend.name}"
                )
            raise ValueError("mmap_dir is not supported by coreai_opt_gpu's Quantizer yet")
        if backend == ExportBackend.CoreML:
            raise ValueError(
                "backend=ExportBackend.CoreML is not available yet for quantization; "
                "available: ExportBackend.CoreAI, ExportBackend.Torch"
            )
        if not self._prepared:
            raise RuntimeError("the model is not prepared for quantization: call prepare first")
        self._check_model(model)
        fakes = self._quantizer.fake_quantizers()
        disabled = [f.tensor_fqn for f in fakes if not int(f.fake_quant_enabled[0])]
        if disabled:
            warnings.warn(
                f"fake quantization is disabled on {disabled}; finalize quantizes them anyway "
                f"(as coreai_opt does)",
                UserWarning,
                stacklevel=2,
            )
        finalized = self._quantizer.finalize(model, backend)
        self._prepared, self._finalized = False, True
        return finalized
