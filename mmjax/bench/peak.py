"""The peak FLOP/s that MFU is measured against.

Accelerators: the vendor's dense bf16 peak by device kind. CPU: measured in the same
run as the benchmark, the median rate of a large matmul in the compute dtype (XLA's best case).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per device (vendor data sheets), matched by the longest key found in `device_kind`
# ("NVIDIA L40S" is an L40S, not an L40 or an L4; a TPU v5p VM reports "TPU v5", a v5e one "TPU v5 lite").
BF16_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,  # data sheets give 1 671 TFLOP/s with 2:4 sparsity
    "H200 NVL": 835e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "TPU v6": 918e12,
    "TPU v5": 459e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v4": 275e12,
}


def device_peak_flops(device: jax.Device) -> float | None:
    """The table's bf16 peak of `device`, or None (CPU, or a device kind not in the table)."""
    kind = device.device_kind.lower()
    matches = [key for key in BF16_PEAK_FLOPS if key.lower() in kind]
    return BF16_PEAK_FLOPS[max(matches, key=len)] if matches else None


def model_flops_utilization(achieved: float, peak: float | None, platform: str, devices: int) -> float | None:
    """`achieved` FLOP/s over the peak of all `devices`. On CPU `peak` is measured on one device that already
    uses every core of the process, which all CPU devices share: it is the peak of them all."""
    if not peak:
        return None
    return achieved / (peak if platform == "cpu" else peak * devices)


def measure_matmul_flops(size: int = 2048, repeats: int = 7, dtype=jnp.float32) -> float:
    """Median FLOP/s of `[size, size] @ [size, size]` in `dtype` on the default device, summed in float32
    (`preferred_element_type`) as the models' matmuls are: XLA:CPU multiplies bf16 on its bf16 kernels only then."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(dtype))
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.dtype(dtype))
    matmul = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times)
