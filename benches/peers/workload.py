"""The workload's sizes and its data generator (SplitMix64 + Box-Muller), shared by the peer
scripts; see ../../../shared/bench/workload.md, sections 6 and 7."""
import math
import resource

CONFIGS = {  # batch, d_in, hidden, classes, warm-up steps, timed steps
    "S": (32, 16, 64, 4, 200, 500),
    "M": (128, 64, 256, 10, 100, 300),
    "L": (512, 256, 1024, 10, 20, 60),
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
