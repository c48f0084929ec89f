"""The workload's sizes, its data generator (SplitMix64 + Box-Muller) and its timing protocol,
shared by the peer scripts; see ../../../shared/bench/workload.md, sections 6 to 8."""
import json
import math
import resource
import time

import numpy as np

CONFIGS = {  # batch, d_in, hidden, classes, warm-up steps, timed steps
    "S": (32, 16, 64, 4, 200, 500),
    "M": (128, 64, 256, 10, 100, 300),
    "L": (512, 256, 1024, 10, 20, 60),
}
# The CNN of section 10: batch, image side, input channels, conv channels, classes, warm-up,
# timed steps.
CNN_CONFIGS = {
    "CNN-S": (32, 8, 1, (16, 32), 10, 100, 300),
    "CNN-M": (64, 28, 1, (32, 64), 10, 10, 40),
}
MASK = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.s = seed & MASK

    def next_u64(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & MASK
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def uniform(self):
        return ((self.next_u64() >> 11) + 0.5) / 2.0**53

    def normal(self):
        u1, u2 = self.uniform(), self.uniform()
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def peak_rss_mib():
    """The process's peak resident size (VmHWM), imports included, in MiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def measure(peer, config, step, warmup, timed, **versions):
    """Times `step()` as section 8 says and prints one JSON line: the first step alone (tracing,
    compilation), then `warmup` steps, then `timed` steps each measured alone; median, p10 and
    p90 in microseconds. `step()` returns the loss as a host float, which forces the step to
    finish (JAX dispatches asynchronously)."""
    start = time.perf_counter()
    first_loss = step()
    first_step_s = time.perf_counter() - start
    for _ in range(warmup):
        step()
    times = []
    for _ in range(timed):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e6)
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    print(json.dumps({"peer": peer, "config": config, "median_us": round(median, 1), "p10_us": round(p10, 1),
                      "p90_us": round(p90, 1), "first_step_s": round(first_step_s, 3),
                      "first_loss": round(first_loss, 4), "peak_rss_mib": peak_rss_mib(), **versions}), flush=True)


def cnn_data(name):
    """The CNN workload's inputs (B, side, side, C) NHWC and labels, from SplitMix64 seed 42."""
    batch, side, channels, _, classes, _, _ = CNN_CONFIGS[name]
    rng = SplitMix64(42)
    x = np.array([rng.normal() for _ in range(batch * side * side * channels)], dtype=np.float32)
    labels = np.array([rng.next_u64() % classes for _ in range(batch)], dtype=np.int64)
    return x.reshape(batch, side, side, channels), labels

