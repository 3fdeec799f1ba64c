"""`ConfigAnnotator`: a torchao pt2e `Quantizer` whose annotations are our config's resolution.

Which config applies to a node: the config `coreai_opt_gpu.config.resolver.module_configs`
gives the innermost module the node's source ran in (module name > module type > global, a
matched module's config inherited by its children); in it the later `op_name_config` regex
matching the node's name, else `op_type_config[node type]`, else the module's op-level specs.

Each quantizable op (`ops`) then proposes a spec, or declines (None), for its slots, with the
priority of its config (module level, op-config level, longer patterns, module order, graph
order; module-boundary specs beat all):

- input slots by position among the op's input nodes (an int key, else "*"); parameters,
  buffers and decoded compressed weights are states, looked up in `op_state_spec` by every
  name modules give the tensor (a compressed weight is never re-quantized; a tensor several
  ops read is decided once, by the highest-priority one);
- the output slot (key 0, else "*") of the pattern's last node (past BatchNorm / activation);
- `module_input_spec` / `module_output_spec` slots at a module's boundary (inputs numbered in
  the order its nodes consume outside tensors, outputs in the order its nodes feed outside
  users), `module_state_spec` the module's own tensors.

Slots that must read one fake quantizer are grouped (coreai_opt graph mode's sharing): a
quantized output with the quantized inputs it feeds (through rank-preserving shape ops too),
consumers of an unquantized tensor with equal specs, every slot of a shared-observer op. A
group's spec is its highest-priority proposal, with the union of the proposed float ranges
(None: from the data) and an op-intrinsic scheme; rank-changing shape ops pass scheme and
range downstream. Each group is one torchao spec, the other slots `SharedQuantizationSpec`s.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import fx, nn
from torchao.quantization.pt2e.quantizer import (
    QuantizationAnnotation,
    SharedQuantizationSpec,
)
from torchao.quantization.pt2e.quantizer import Quantizer as TorchaoQuantizer

from coreai_opt_gpu.config.base import ALL_TENSORS
from coreai_opt_gpu.config.resolver import ConfigLevel, ModuleChoice, module_configs
from coreai_opt_gpu.config.spec import CompressionTargetTensor
from coreai_opt_gpu.quantization.graph import ops
from coreai_opt_gpu.quantization.graph.fake_quant import torchao_spec
from coreai_opt_gpu.quantization.spec import (
    PerBlockGranularity,
    PerChannelGranularity,
    PerTensorGranularity,
    QuantizationScheme,
    QuantizationSpec,
)

Slot = fx.Node | tuple[fx.Node, fx.Node]  # an op's output, or an (input, op) edge
_NOT_FOUND = object()
MODULE_SPEC_RANK = (-1,)  # module-boundary specs beat every op-level proposal


def lookup(specs: Mapping[Any, Any] | None, keys: list[Any]) -> Any:
    """The value of the last of `keys` present in `specs`, else of "*", else _NOT_FOUND."""
    if not specs:
        return _NOT_FOUND
    found = _NOT_FOUND
    for key in specs:
        if key in keys:
            found = specs[key]
    if found is not _NOT_FOUND:
        return found
    return specs.get(ALL_TENSORS, _NOT_FOUND)


@dataclass(frozen=True)
class OpSpecs:
    """The op-level spec dicts that apply to one node, and how strongly (lower first)."""

    op_input_spec: Mapping[Any, Any]
    op_output_spec: Mapping[Any, Any]
    op_state_spec: Mapping[Any, Any]
    rank: tuple[int, ...]


@dataclass
class Pattern:
    """Nodes annotated together: the primary op, then a BatchNorm / activation it feeds."""

    nodes: list[fx.Node]
    kind: str  # "weighted", "nary" or "shared"

    @property
    def primary(self) -> fx.Node:
        return self.nodes[0]

    @property
    def output(self) -> fx.Node:
        return self.nodes[-1]


@dataclass
class Proposal:
    """What one slot's config asks for: a spec (None: declined), how strongly, the kind of
    tensor, and the op-intrinsic (scheme, float_range) of an output."""

    spec: QuantizationSpec | None
    rank: tuple[int, ...]
    target: CompressionTargetTensor
    intrinsic: tuple[QuantizationScheme, tuple[float | None, float | None]] | None = None
    boundary: bool = False  # a module_input_spec slot: quantizes what the module receives


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def find_patterns(graph: fx.Graph) -> list[Pattern]:
    """Every op graph mode quantizes, with the BatchNorm and activation fused after it."""
    patterns = []
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if ops.is_one_of(node, ops.WEIGHTED_OPS):
            nodes = [node]
            user = _single_user(node)
            if user is not None and ops.is_one_of(user, ops.BATCH_NORMS):
                nodes.append(user)
            user = _single_user(nodes[-1])
            if user is not None and ops.is_one_of(user, ops.ACTIVATIONS):
                nodes.append(user)
            patterns.append(Pattern(nodes, "weighted"))
        elif ops.is_one_of(node, ops.NARY_OPS):
            user = _single_user(node)
            with_act = user is not None and ops.is_one_of(user, ops.ACTIVATIONS)
            patterns.append(Pattern([node, user] if with_act else [node], "nary"))
        elif ops.is_one_of(node, ops.NARY_OPS_WITHOUT_ACTIVATION):
            patterns.append(Pattern([node], "nary"))
        elif ops.is_one_of(node, ops.SHARED_OBSERVER_OPS):
            patterns.append(Pattern([node], "shared"))
    return patterns


class _Groups:
    """Union-find over slots; each root is its group's earliest slot in torchao's order."""

    def __init__(self, order: Mapping[Slot, tuple[int, int, int]]) -> None:
        self.parent: dict[Slot, Slot] = {}
        self.order = order

    def find(self, slot: Slot) -> Slot:
        self.parent.setdefault(slot, slot)
        while self.parent[slot] != slot:
            self.parent[slot] = self.parent[self.parent[slot]]
            slot = self.parent[slot]
        return slot

    def union(self, a: Slot, b: Slot) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            first, second = sorted((root_a, root_b), key=self.order.__getitem__)
            self.parent[second] = first


class ConfigAnnotator(TorchaoQuantizer):
    """Annotates an exported graph with the fake quantizers `config` asks for (see the
    module docstring). `model` is the original module (names, types and tensors)."""

    def __init__(self, config: Any, model: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.choices: dict[str, ModuleChoice] = module_configs(config, model)
        first_name: dict[int, str] = {}
        self.canonical: dict[str, str] = {}
        for name, module in model.named_modules(remove_duplicate=False):
            self.canonical[name] = first_name.setdefault(id(module), name)
        self.state_names, self.state_owners = _state_names(model, self.canonical)
        self.node_ranks: dict[fx.Node, tuple[int, ...]] = {}  # annotation priority (low first)
        self.intrinsic_overrides: list[str] = []
        self._state_decisions: dict[fx.Node, QuantizationSpec | None] = {}

    # --- config of a node ----------------------------------------------------------------------

    def _module_of(self, node: fx.Node) -> str | None:
        module = ops.source_module(node)
        return None if module is None else self.canonical.get(module, module)

    def op_specs(self, node: fx.Node) -> OpSpecs | None:
        """The op-level specs for `node` from its module's config; None: no config applies."""
        module = self._module_of(node)
        choice = self.choices.get(module if module is not None else "")
        if choice is None:
            return None
        config = choice.config
        level = list(ConfigLevel).index(choice.level)
        # within a level: the module's order there (the later-declared key first); the global
        # config is one entry, so graph order decides
        priority = 0 if choice.level == ConfigLevel.GLOBAL else choice.priority
        for pattern, op_config in reversed(config.op_name_config.items()):
            if re.fullmatch(pattern, node.name):
                return _op_specs(op_config, (level, 0, priority))
        node_type = ops.node_type(node)
        if node_type is not None and node_type in config.op_type_config:
            return _op_specs(config.op_type_config[node_type], (level, 1, priority))
        return _op_specs(config, (level, 2, priority))

    # --- annotation ----------------------------------------------------------------------------

    def annotate(self, model: fx.GraphModule) -> fx.GraphModule:
        graph = model.graph
        index = {node: i for i, node in enumerate(graph.nodes)}
        ranked = []
        for pattern in find_patterns(graph):
            specs = self.op_specs(pattern.primary)
            if specs is not None:
                ranked.append((_rank(specs, pattern, index), pattern, specs))
        ranked.sort(key=lambda item: item[0])
        proposals: dict[Slot, Proposal] = {}
        shared_ops = []
        for rank, pattern, specs in ranked:
            for node in pattern.nodes:
                self.node_ranks.setdefault(node, rank)
            self._propose_inputs(pattern, specs, rank, proposals)
            if pattern.kind == "shared":
                shared_ops.append(pattern.primary)
            else:
                self._propose_output(pattern, specs, rank, proposals)
        self._propose_module_specs(model, proposals)

        order: dict[Slot, tuple[int, int, int]] = {}
        for node in graph.nodes:
            for position, arg in enumerate(node.all_input_nodes):
                order[(arg, node)] = (index[node], 0, position)
            order[node] = (index[node], 1, 0)
        groups = self._group(graph, proposals, shared_ops, order)
        self._emit(graph, proposals, groups, order)
        return model

    def validate(self, model: fx.GraphModule) -> None:
        """Nothing beyond what annotate checks."""

    def _propose_inputs(
        self,
        pattern: Pattern,
        specs: OpSpecs,
        rank: tuple[int, ...],
        proposals: dict[Slot, Proposal],
    ) -> None:
        node = pattern.primary
        for position, arg in enumerate(node.all_input_nodes):
            edge = (arg, node)
            if ops.is_state(arg):
                if position in specs.op_input_spec:
                    raise RuntimeError(
                        f"op_input_spec[{position}] of node {node.name!r} names a state tensor "
                        f"({arg.name}); configure states with op_state_spec"
                    )
                spec = self._state_spec(arg, specs)
                target = CompressionTargetTensor.WEIGHT
                if spec is not None and ops.is_floating(arg):
                    spec = self._with_weight_axis(spec, arg, node)
            else:
                found = lookup(specs.op_input_spec, [position])
                if found is _NOT_FOUND:
                    continue
                spec, target = found, CompressionTargetTensor.ACTIVATION
                if spec is not None and ops.is_floating(arg):
                    _check_activation_axis(spec, arg)
            if not ops.is_floating(arg):
                if spec is not None and position in specs.op_input_spec:
                    warnings.warn(
                        f"op_input_spec[{position}] of node {node.name!r}: input {arg.name} is "
                        f"not a floating-point tensor and stays unquantized",
                        UserWarning,
                        stacklevel=5,
                    )
                continue
            proposals.setdefault(edge, Proposal(spec, rank, target))

    def _state_spec(self, state: fx.Node, specs: OpSpecs) -> QuantizationSpec | None:
        """The op_state_spec entry for a state node (by every local name modules give the
        tensor), decided once by its highest-priority consumer; compressed states (decoded
        weights) are left alone."""
        if state not in self._state_decisions:
            spec = None
            if state.op == "get_attr":
                found = lookup(specs.op_state_spec, self.state_names.get(str(state.target), []))
                spec = None if found is _NOT_FOUND else found
            self._state_decisions[state] = spec
        return self._state_decisions[state]

    def _with_weight_axis(
        self, spec: QuantizationSpec, state: fx.Node, node: fx.Node
    ) -> QuantizationSpec:
        """axis=None of a per-channel / per-block weight spec -> the consuming op's default
        (output channels per channel, input channels per block)."""
        granularity = spec.granularity
        if not _needs_axis(granularity):
            return spec
        weighted = ops.WEIGHTED_OPS.get(ops.packet(node))
        if weighted is None:
            raise ValueError(
                f"cannot resolve axis=None of the {granularity.type} spec for "
                f"'{state.target}': its consumer {node.name} ({ops.node_type(node)}) has no "
                f"default weight axis; give the axis explicitly"
            )
        per_channel, per_block = ops.WEIGHT_AXES[weighted[0]]
        axis = per_channel if isinstance(granularity, PerChannelGranularity) else per_block
        return spec.model_copy(
            update={"granularity": granularity.model_copy(update={"axis": axis})}
        )

    def _propose_output(
        self,
        pattern: Pattern,
        specs: OpSpecs,
        rank: tuple[int, ...],
        proposals: dict[Slot, Proposal],
    ) -> None:
        node = pattern.output
        found = lookup(specs.op_output_spec, [0])
        if found is _NOT_FOUND or not ops.is_floating(node):
            return
        if found is not None:
            _check_activation_axis(found, node)
        target = CompressionTargetTensor.ACTIVATION
        proposals.setdefault(node, Proposal(found, rank, target, ops.intrinsic_range(node)))

    def _propose_module_specs(self, model: fx.GraphModule, proposals: dict[Slot, Proposal]) -> None:
        """module_input_spec / module_output_spec / module_state_spec proposals, which beat
        the op-level ones."""
        nodes = list(model.graph.nodes)
        activation, weight = CompressionTargetTensor.ACTIVATION, CompressionTargetTensor.WEIGHT
        for name, choice in self.choices.items():
            config = choice.config
            if not (config.module_input_spec or config.module_output_spec):
                continue
            inside = [n for n in nodes if self._in_module(n, name)]
            members = set(inside)
            boundary_inputs = [
                (arg, n)
                for n in inside
                for arg in n.all_input_nodes
                if arg not in members and not ops.is_state(arg)
            ]
            boundary_outputs = [n for n in inside if any(u not in members for u in n.users)]
            for position, (arg, n) in enumerate(boundary_inputs):
                found = lookup(config.module_input_spec, [position])
                if found is not _NOT_FOUND and ops.is_floating(arg):
                    if found is not None:
                        _check_activation_axis(found, arg)
                    proposals[(arg, n)] = Proposal(
                        found, MODULE_SPEC_RANK, activation, boundary=True
                    )
            for position, n in enumerate(boundary_outputs):
                found = lookup(config.module_output_spec, [position])
                if found is not _NOT_FOUND and ops.is_floating(n):
                    if found is not None:
                        _check_activation_axis(found, n)
                    proposals[n] = Proposal(found, MODULE_SPEC_RANK, activation)
        for node in nodes:
            if node.op != "get_attr" or not ops.is_floating(node):
                continue
            spec = self._module_state_spec(str(node.target))
            if spec is _NOT_FOUND:
                continue
            for user in node.users:
                resolved = None if spec is None else self._with_weight_axis(spec, node, user)
                proposals[(node, user)] = Proposal(resolved, MODULE_SPEC_RANK, weight)

    def _module_state_spec(self, target: str) -> Any:
        """module_state_spec entry for a tensor from the highest-priority module holding it
        whose module_state_spec names it; _NOT_FOUND when none does."""
        names = self.state_names.get(target, [])
        owners = [self.choices[o] for o in self.state_owners.get(target, []) if o in self.choices]
        for choice in sorted(owners, key=lambda c: c.priority):
            found = lookup(choice.config.module_state_spec, names)
            if found is not _NOT_FOUND:
                return found
        return _NOT_FOUND

    def _in_module(self, node: fx.Node, module: str) -> bool:
        return any(self.canonical.get(m, m) == module for m in ops.source_modules(node))

    # --- grouping ------------------------------------------------------------------------------

    def _group(
        self,
        graph: fx.Graph,
        proposals: dict[Slot, Proposal],
        shared_ops: list[fx.Node],
        order: dict[Slot, tuple[int, int, int]],
    ) -> _Groups:
        groups = _Groups(order)

        def active(slot: Slot) -> bool:
            return slot in proposals and proposals[slot].spec is not None

        # shared-observer ops (graph order): every slot on one observer once an input is
        for node in sorted(shared_ops, key=order.__getitem__):
            inputs = [a for a in node.all_input_nodes if ops.is_floating(a) and not ops.is_state(a)]
            seeds = [
                s
                for a in inputs
                for s in (self._upstream(a, proposals), (a, node))
                if s is not None
            ]
            seeds = [s for s in seeds if active(s)]
            if not seeds:
                continue
            seed = proposals[seeds[0]]
            for arg in inputs:
                edge = (arg, node)
                if not active(edge) and not active(arg):
                    proposals[edge] = Proposal(seed.spec, seed.rank, seed.target)
            proposals[node] = Proposal(seed.spec, seed.rank, seed.target)
            for slot in (*seeds, *((a, node) for a in inputs if active((a, node))), node):
                groups.union(seeds[0], slot)
        # rank-preserving shape-only ops: one observer for their input, output and readers
        for node in graph.nodes:
            if not ops.is_one_of(node, ops.PASSTHROUGH_OPS) or not node.all_input_nodes:
                continue
            if not ops.is_floating(node):
                continue
            producer = node.all_input_nodes[0]
            around = [(producer, node), node, *((node, user) for user in node.users)]
            shape_only = ops.is_one_of(producer, (*ops.PASSTHROUGH_OPS, *ops.RANK_CHANGING_OPS))
            if producer in proposals or shape_only:
                around.insert(0, producer)
            seeds = [slot for slot in around if active(slot)]
            if not seeds:
                continue
            seed = min(seeds, key=lambda slot: proposals[slot].rank)
            for slot in around:
                # the op's output, and its input unless the producer's quantizer covers it
                fill = slot is node or (slot == (producer, node) and not active(producer))
                fill = fill or (slot is producer and not isinstance(slot, tuple))
                if slot not in proposals and fill:
                    source = proposals[seed]
                    proposals[slot] = Proposal(source.spec, source.rank, source.target)
                if active(slot):
                    groups.union(seeds[0], slot)
        # each active input edge: with the producer's observer (through shape-only ops)
        by_producer: dict[fx.Node, list[tuple[fx.Node, fx.Node]]] = {}
        for slot in proposals:
            if not isinstance(slot, tuple) or not active(slot):
                continue
            upstream = self._upstream(slot[0], proposals)
            joins = upstream is not None and active(upstream)
            if joins and proposals[slot].boundary:  # a different spec: a quantizer of its own
                joins = proposals[slot].spec == proposals[upstream].spec
            if joins:
                groups.union(upstream, slot)
            else:
                by_producer.setdefault(slot[0], []).append(slot)
        # readers of one unquantized tensor whose specs torchao cannot tell apart (its
        # implicit sharing, which coreai_opt relies on) share one quantizer
        for edges in by_producer.values():
            for i, edge in enumerate(edges):
                for other in edges[:i]:
                    if _sharing_key(proposals[other].spec) == _sharing_key(proposals[edge].spec):
                        groups.union(other, edge)
                        break
        return groups

    def _upstream(self, node: fx.Node, proposals: dict[Slot, Proposal]) -> Slot | None:
        """The output slot whose observer a tensor reads: its producer's, through
        rank-preserving shape-only ops; None when there is none."""
        seen = set()
        while node not in seen:
            seen.add(node)
            if node in proposals:
                return node
            if not ops.is_one_of(node, ops.PASSTHROUGH_OPS) or not node.all_input_nodes:
                return None
            node = node.all_input_nodes[0]
        return None

    def _facts_source(self, node: fx.Node, proposals: dict[Slot, Proposal]) -> Slot | None:
        """For a tensor out of a chain of rank-changing shape-only ops: the output slot at
        the chain's start (its scheme and range carry over), else None."""
        if not ops.is_one_of(node, ops.RANK_CHANGING_OPS):
            return None
        seen = set()
        while ops.is_one_of(node, ops.RANK_CHANGING_OPS) and node.all_input_nodes:
            if node in seen:
                return None
            seen.add(node)
            node = node.all_input_nodes[0]
            if node in proposals and proposals[node].spec is not None:
                return node
        return None

    # --- emission ------------------------------------------------------------------------------

    def _group_specs(
        self,
        proposals: dict[Slot, Proposal],
        members: dict[Slot, list[Slot]],
        groups: _Groups,
    ) -> dict[Slot, QuantizationSpec]:
        """root -> the spec its group is quantized with (see the module docstring)."""
        specs = {root: self._reconcile(group, proposals) for root, group in members.items()}
        for root, group in members.items():  # rank-changing chains pass facts downstream
            for slot in group:
                if not isinstance(slot, tuple):
                    continue
                source = self._facts_source(slot[0], proposals)
                if source is None or groups.find(source) == root:
                    continue
                facts = specs[groups.find(source)]
                spec = specs[root]
                update: dict[str, Any] = {"float_range": list(facts.float_range)}
                if not spec.is_floating:
                    update["qscheme"] = facts.qscheme
                specs[root] = type(spec)(**{**spec.model_dump_preserve_objects(), **update})
                break
        return specs

    def _reconcile(self, group: list[Slot], proposals: dict[Slot, Proposal]) -> QuantizationSpec:
        ranked = sorted(group, key=lambda s: proposals[s].rank)
        winner = proposals[ranked[0]].spec
        assert winner is not None
        ranges, scheme, intrinsic_nodes = [], None, []
        for slot in ranked:
            proposal = proposals[slot]
            if proposal.intrinsic is not None:
                intrinsic_scheme, intrinsic_range = proposal.intrinsic
                ranges.append(list(intrinsic_range))
                scheme = scheme or intrinsic_scheme
                intrinsic_nodes.append(slot)
            else:
                ranges.append(list(proposal.spec.float_range))
        low = None if any(r[0] is None for r in ranges) else min(r[0] for r in ranges)
        high = None if any(r[1] is None for r in ranges) else max(r[1] for r in ranges)
        update: dict[str, Any] = {"float_range": [low, high]}
        if scheme is not None and not winner.is_floating:
            update["qscheme"] = scheme
        spec = type(winner)(**{**winner.model_dump_preserve_objects(), **update})
        for slot in intrinsic_nodes:
            configured = proposals[slot].spec
            if (spec.qscheme, spec.float_range) != (configured.qscheme, configured.float_range):
                self.intrinsic_overrides.append(slot.name)
        altering = [
            s for s in group
            if isinstance(s, fx.Node) and ops.is_one_of(s, ops.SHARED_OBSERVER_OPS)
            and not ops.is_one_of(s, (ops.aten.cat, ops.aten.concat))
        ]  # fmt: skip
        if altering and not isinstance(spec.granularity, PerTensorGranularity):
            warnings.warn(
                f"the {spec.granularity.type} activation spec is shared across "
                f"{[s.name for s in altering]}, which change the tensor's shape; it is "
                f"quantized per tensor there (as coreai_opt does)",
                UserWarning,
                stacklevel=6,
            )
            spec = spec.model_copy(update={"granularity": PerTensorGranularity()})
        return spec

    def _emit(
        self,
        graph: fx.Graph,
        proposals: dict[Slot, Proposal],
        groups: _Groups,
        order: dict[Slot, tuple[int, int, int]],
    ) -> None:
        members: dict[Slot, list[Slot]] = {}
        for slot, proposal in proposals.items():
            if proposal.spec is not None:
                members.setdefault(groups.find(slot), []).append(slot)
        specs = self._group_specs(proposals, members, groups)
        annotations: dict[fx.Node, QuantizationAnnotation] = {}

        def annotation(node: fx.Node) -> QuantizationAnnotation:
            if node not in annotations:
                annotations[node] = QuantizationAnnotation(
                    input_qspec_map={}, output_qspec=None, allow_implicit_sharing=False,
                    _annotated=True,
                )  # fmt: skip
            return annotations[node]

        for root, group in members.items():
            group.sort(key=order.__getitem__)
            first = group[0]
            concrete = torchao_spec(specs[root], proposals[first].target)
            for slot in group:
                qspec = concrete if slot == first else SharedQuantizationSpec(first)
                if isinstance(slot, tuple):
                    annotation(slot[1]).input_qspec_map[slot[0]] = qspec
                else:
                    annotation(slot).output_qspec = qspec
        for node in graph.nodes:
            if node in annotations:
                found = annotations[node]
                found.input_qspec_map = {
                    arg: found.input_qspec_map[arg]
                    for arg in node.all_input_nodes
                    if arg in found.input_qspec_map
                }
                node.meta["quantization_annotation"] = found


def _sharing_key(spec: QuantizationSpec) -> tuple[Any, ...]:
    """What torchao compares before sharing two readers' observers: storage dtype, range,
    symmetric or not, per tensor or the channel axis."""
    granularity = spec.granularity
    axis = granularity.axis if isinstance(granularity, PerChannelGranularity) else None
    symmetric = spec.qscheme != QuantizationScheme.ASYMMETRIC
    return (spec.target_dtype, spec.quant_min, spec.quant_max, symmetric, type(granularity), axis)


def _rank(specs: OpSpecs, pattern: Pattern, index: Mapping[fx.Node, int]) -> tuple[int, ...]:
    """Annotation order, as coreai_opt's: module config level, op config level (name, type,
    default), longer patterns first, module priority within the level, graph order."""
    level, op_level, priority = specs.rank
    return (level, op_level, -len(pattern.nodes), priority, index[pattern.primary])


def _op_specs(config: Any, rank: tuple[int, ...]) -> OpSpecs:
    return OpSpecs(config.op_input_spec, config.op_output_spec, config.op_state_spec, rank)


def _needs_axis(granularity: Any) -> bool:
    return (
        isinstance(granularity, PerChannelGranularity)
        or (
            isinstance(granularity, PerBlockGranularity) and isinstance(granularity.block_size, int)
        )
    ) and granularity.axis is None


def _check_activation_axis(spec: QuantizationSpec, node: fx.Node) -> None:
    if _needs_axis(spec.granularity):
        raise ValueError(
            f"activation spec for {node.name}: {spec.granularity.type} granularity needs an "
            f"explicit axis (activations have no default axis), e.g. "
            f"PerChannelGranularity(axis=1)"
        )


def _state_names(
    model: nn.Module, canonical: Mapping[str, str]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Full tensor name -> every local name modules give that tensor, and -> the (canonical)
    names of the modules holding it."""
    full: dict[int, list[str]] = {}
    local: dict[int, list[str]] = {}
    owners: dict[int, list[str]] = {}
    for name, tensor in (
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ):
        full.setdefault(id(tensor), []).append(name)
        owner, _, leaf = name.rpartition(".")
        owner = canonical.get(owner, owner)
        if leaf not in local.setdefault(id(tensor), []):
            local[id(tensor)].append(leaf)
        if owner not in owners.setdefault(id(tensor), []):
            owners[id(tensor)].append(owner)
    names = {name: local[key] for key, all_names in full.items() for name in all_names}
    holders = {name: owners[key] for key, all_names in full.items() for name in all_names}
    return names, holders
