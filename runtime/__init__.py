"""wasmrun.runtime: the dynamic linker for WebAssembly (dylink.0) over wasmtime.

Synchronous and socket-free; the CLI and the daemon are thin layers over
:class:`Runtime`.
"""

from .api import RunResult, Runtime, WasiOptions, make_engine
from .errors import (
    BinaryFormatError,
    GuestExit,
    GuestTrap,
    LimitError,
    LoadError,
    RunInterrupted,
    SymbolError,
    WasmrunError,
)
from .instance import InstanceSet
from .limits import RunControl, RunLimits
from .plan import LinkOptions, LinkPlan

__all__ = [
    "BinaryFormatError",
    "GuestExit",
    "GuestTrap",
    "InstanceSet",
    "LimitError",
    "LinkOptions",
    "LinkPlan",
    "LoadError",
    "RunControl",
    "RunInterrupted",
    "RunLimits",
    "RunResult",
    "Runtime",
    "SymbolError",
    "WasiOptions",
    "WasmrunError",
    "make_engine",
]
