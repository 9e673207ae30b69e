"""Bytes per device of a compiled program, from XLA's memory analysis.

`memory_analysis()` describes one device's share of an SPMD program: its arguments
(the local shards of the state and batch), outputs, temporaries, and the outputs
that reuse donated arguments (aliases). What the device holds at once is
`arguments + outputs − aliases + temporaries`; XLA's own `peak_memory_in_bytes` is
reported beside it where the backend fills it in.
"""

from __future__ import annotations

from typing import Any


def memory_per_device(compiled: Any) -> dict[str, int]:
    """`{"memory_per_device_bytes", "argument_bytes", "output_bytes", "alias_bytes", "temp_bytes",
    "peak_bytes"}` of a `jax.stages.Compiled`; `{}` when the backend gives no analysis."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    report = {"argument_bytes": int(stats.argument_size_in_bytes), "output_bytes": int(stats.output_size_in_bytes),
              "alias_bytes": int(stats.alias_size_in_bytes), "temp_bytes": int(stats.temp_size_in_bytes)}
    report["memory_per_device_bytes"] = (report["argument_bytes"] + report["output_bytes"] - report["alias_bytes"]
                                         + report["temp_bytes"])
    report["peak_bytes"] = int(getattr(stats, "peak_memory_in_bytes", 0) or 0)
    return report
