"""Launch ledger: an opt-in record of what the engine asks of the device.

    from coreai_opt_gpu import ledger

    with ledger.record() as book:
        palettizer.prepare()
    print(book.summary())

While recording, every kernel launch (Triton kernel or its numpy twin: name, backend, grid,
logical bytes read and written, the longest chain of dependent memory accesses in one program),
every torch call (name, bytes in and out; each one is a device kernel on CUDA), every tensor it
allocates, every host sync and every host<->device copy are logged as `Event`s.

Syncs are recognised by what they are, not by the device, so the device code path can run in CI
with CPU tensors standing in for CUDA ones (COREAI_OPT_GPU_BACKEND=triton, TRITON_INTERPRET=1):
`item`, `tolist`, `numpy`, `bool`/`int`/`float` of a tensor, `nonzero`, `unique`,
`masked_select`, boolean-mask indexing, `equal`, `allclose`, `repeat_interleave` without an
output size, `bincount`, printing; `cpu()` and `.to("cpu")` are copies (and syncs). Work inside
a kernel launch (the interpreter's own tensor traffic) is not logged.

Bytes are logical: what a kernel must read and write at least (an atomic update of a histogram
that fits in L2 counts as one write per bin). Some kernel figures depend on results (loop trip
counts, histogram spans); they are computed from those results when the ledger is read, after
recording has ended.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode

SYNC_CALLS = frozenset(
    {
        "item",
        "tolist",
        "numpy",
        "__bool__",
        "__int__",
        "__float__",
        "__index__",
        "__repr__",
        "__str__",
        "__format__",
        "nonzero",
        "argwhere",
        "unique",
        "unique_consecutive",
        "masked_select",
        "equal",
        "allclose",
        "bincount",
    }
)
METADATA_CALLS = frozenset(
    {
        "dim",
        "size",
        "numel",
        "stride",
        "element_size",
        "is_contiguous",
        "data_ptr",
        "storage_offset",
        "untyped_storage",
        "get_device",
        "is_floating_point",
        "is_complex",
        "__len__",
        "__hash__",
        "__eq__",  # identity comparisons of dtypes/devices reach here only for tensors
        "_is_view",
        "requires_grad_",
        "detach",
        "__iter__",
        "__getattribute__",
        "__get__",  # property getters: shape, dtype, device, ...
    }
)
# reads only what the output needs (plus the index): gathers and searches
GATHER_CALLS = frozenset({"gather", "take", "take_along_dim", "index_select", "searchsorted"})
EMPTY_CALLS = frozenset({"empty", "empty_like", "new_empty", "empty_strided"})


@dataclass
class Event:
    """One logged action. kind: launch | op | alloc | sync | copy."""

    kind: str
    name: str
    backend: str = ""
    grid: tuple[int, ...] = ()
    bytes_read: int = 0
    bytes_written: int = 0
    serial_steps: int = 0
    detail: str = ""
    resolve: Callable[[], tuple[int, int, int]] | None = field(default=None, repr=False)

    def settle(self) -> None:
        """Compute result-dependent figures (bytes read, written, serial steps)."""
        if self.resolve is not None:
            extra_read, extra_written, steps = self.resolve()
            self.bytes_read += int(extra_read)
            self.bytes_written += int(extra_written)
            self.serial_steps = max(self.serial_steps, int(steps))
            self.resolve = None


@dataclass
class Summary:
    launches: int  # Triton kernels (or their twins) plus torch calls: device kernels on CUDA
    kernels: Counter  # name -> count, Triton kernels and twins
    twin_launches: int  # kernels that ran as numpy twins
    torch_ops: Counter  # name -> count
    syncs: int
    copies: int
    allocations: int
    allocated_bytes: int
    bytes_read: int
    bytes_written: int

    @property
    def bytes_moved(self) -> int:
        return self.bytes_read + self.bytes_written


class Ledger:
    """The events of one `record()` block, in order."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._suspended = 0

    @property
    def events(self) -> list[Event]:
        for event in self._events:
            event.settle()
        return self._events

    def of_kind(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    def summary(self) -> Summary:
        events = self.events
        launches = [e for e in events if e.kind == "launch"]
        ops = [e for e in events if e.kind == "op"]
        allocs = [e for e in events if e.kind == "alloc"]
        moving = launches + ops + [e for e in events if e.kind == "copy"]
        return Summary(
            launches=len(launches) + len(ops),
            kernels=Counter(e.name for e in launches),
            twin_launches=sum(e.backend == "numpy" for e in launches),
            torch_ops=Counter(e.name for e in ops),
            syncs=sum(e.kind in ("sync", "copy") for e in events),
            copies=sum(e.kind == "copy" for e in events),
            allocations=len(allocs),
            allocated_bytes=sum(e.bytes_written for e in allocs),
            bytes_read=sum(e.bytes_read for e in moving),
            bytes_written=sum(e.bytes_written for e in moving),
        )

    def add(self, event: Event) -> None:
        self._events.append(event)


_active: list[Ledger] = []


def active() -> Ledger | None:
    """The ledger being recorded into, or None."""
    return _active[-1] if _active else None


@contextmanager
def record() -> Iterator[Ledger]:
    """Record everything the enclosed code asks of torch and the kernels into a new Ledger."""
    book = Ledger()
    _active.append(book)
    try:
        with _Recorder(book):
            yield book
    finally:
        _active.remove(book)


@contextmanager
def kernel(
    name: str,
    backend: str,
    grid: tuple[int, ...],
    bytes_read: int,
    bytes_written: int,
    serial_steps: int = 0,
) -> Iterator[Event | None]:
    """Log one kernel launch; nothing inside the block is logged (the launch itself, or the
    twin's host computation). Yields the event (None when not recording), whose `resolve`
    the caller may set to add figures known only from the results."""
    book = active()
    if book is None:
        yield None
        return
    event = Event("launch", name, backend, tuple(grid), bytes_read, bytes_written, serial_steps)
    book.add(event)
    book._suspended += 1
    try:
        yield event
    finally:
        book._suspended -= 1


@dataclass(frozen=True)
class KernelSpec:
    """One kernel of an op: what `kernels()` logs for it."""

    name: str
    grid: tuple[int, ...]
    bytes_read: int
    bytes_written: int
    serial_steps: int = 0


@contextmanager
def kernels(
    backend: str, specs: list[KernelSpec], allocations: list[tuple[str, int]] = ()
) -> Iterator[list[Event]]:
    """Log the kernels of one op (a launcher may run several) and the buffers it allocates,
    then run the block unlogged. Yields the kernel events (empty when not recording); set an
    event's `resolve` to add figures known only from the results."""
    book = active()
    if book is None:
        yield []
        return
    events = [
        Event("launch", s.name, backend, tuple(s.grid), s.bytes_read, s.bytes_written,
              s.serial_steps)
        for s in specs
    ]  # fmt: skip
    for event in events:
        book.add(event)
    for name, size in allocations:
        book.add(Event("alloc", name, bytes_written=int(size)))
    book._suspended += 1
    try:
        yield events
    finally:
        book._suspended -= 1


@contextmanager
def upload(name: str, *tensors: torch.Tensor) -> Iterator[None]:
    """Log a deliberate host-to-device copy of constant tensors (done once per device)."""
    book = active()
    if book is None:
        yield
        return
    size = sum(t.numel() * t.element_size() for t in tensors)
    book.add(Event("copy", name, bytes_read=size, bytes_written=size, detail="upload"))
    book._suspended += 1
    try:
        yield
    finally:
        book._suspended -= 1


@contextmanager
def host_work() -> Iterator[None]:
    """Host-only computation (building constant tables): not device work, not logged."""
    book = active()
    if book is None:
        yield
        return
    book._suspended += 1
    try:
        yield
    finally:
        book._suspended -= 1


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _func_name(func) -> str:
    name = getattr(func, "__name__", None)
    if name is None:  # property getters such as Tensor.shape.__get__
        name = getattr(getattr(func, "__self__", None), "__name__", repr(func))
    return name


def _is_copy(name: str, args: tuple, kwargs: dict) -> bool:
    """`cpu()`/`cuda()` always (device code has no business calling them), `.to(device)` when
    the device changes."""
    if name in ("cpu", "cuda"):
        return True
    if name != "to" or not args or not isinstance(args[0], torch.Tensor):
        return False
    for value in (*args[1:], *kwargs.values()):
        if isinstance(value, (str, torch.device)):
            return torch.device(value) != args[0].device
        if isinstance(value, torch.Tensor):
            return value.device != args[0].device
    return False


def _bool_index(args: tuple) -> bool:
    index = args[1] if len(args) > 1 else None
    return any(t.dtype == torch.bool for t in _tensors(index))


class _Recorder(TorchFunctionMode):
    """Turns torch calls into ledger events (see the module docstring)."""

    def __init__(self, book: Ledger) -> None:
        super().__init__()
        self.book = book

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.book._suspended:
            return func(*args, **kwargs)
        name = _func_name(func)
        if name in METADATA_CALLS:
            return func(*args, **kwargs)
        inputs = _tensors(args) + _tensors(kwargs)
        if _is_copy(name, args, kwargs):
            size = sum(_nbytes(t) for t in inputs[:1])
            self.book.add(Event("copy", name, bytes_read=size, bytes_written=size))
            return func(*args, **kwargs)
        if name in SYNC_CALLS or (
            name in ("__getitem__", "__setitem__", "index_put_") and _bool_index(args)
        ):
            self.book.add(Event("sync", name, detail=_shapes(inputs)))
        if name == "repeat_interleave" and "output_size" not in kwargs:
            self.book.add(Event("sync", name, detail="no output_size"))
        result = func(*args, **kwargs)
        self._log_op(name, inputs, result)
        return result

    def _log_op(self, name: str, inputs: list[torch.Tensor], result) -> None:
        outputs = _tensors(result)
        storages = {t.untyped_storage().data_ptr() for t in inputs if t.numel()}
        fresh = [t for t in outputs if t.numel() and t.untyped_storage().data_ptr() not in storages]
        in_place = (name.endswith("_") and not name.startswith("__")) or name == "__setitem__"
        if not fresh and not in_place:
            return  # a view, or metadata
        for t in fresh:
            self.book.add(Event("alloc", name, bytes_written=_nbytes(t), detail=_shapes([t])))
        written = sum(_nbytes(t) for t in fresh)
        if name in EMPTY_CALLS:
            return
        if name in GATHER_CALLS or (name == "__getitem__" and len(inputs) > 1):
            # the index, and one element of the source per output element (per search step)
            steps = 1
            if name == "searchsorted":
                steps = max(1, math.ceil(math.log2(inputs[0].shape[-1] + 1)))
            elements = sum(t.numel() for t in fresh)
            read = sum(_nbytes(t) for t in inputs[1:]) + elements * steps * inputs[0].element_size()
        elif in_place:
            target, others = inputs[:1], inputs[1:]
            written = sum(_nbytes(t) for t in target)
            read = sum(_nbytes(t) for t in others)
        else:
            read = sum(_nbytes(t) for t in inputs)
        factor = SORT_PASSES if name in ("sort", "argsort", "msort") else 1
        self.book.add(Event("op", name, bytes_read=factor * read, bytes_written=factor * written))


SORT_PASSES = 4  # a segmented radix sort of 32-bit keys: about four read+write passes


def _shapes(tensors: list[torch.Tensor]) -> str:
    return ", ".join(f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in tensors)
