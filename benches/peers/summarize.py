"""Reads the JSON lines of compare.sh (one per peer, size and round) and prints two tables:
each peer's best median over the rounds (what the issue's reference table reports), and the
median over the rounds (steadier on a noisy machine: one lucky round moves the best). The last
column is tapegrad's ratio to the fastest peer: the fastest peer's time over tapegrad's, so
above 1 means tapegrad is faster. Standard library only."""
import json
import statistics
import sys

runs = {}  # (config, peer) -> medians in microseconds, one per round
for line in sys.stdin:
    line = line.strip()
    if line.startswith("{"):
        run = json.loads(line)
        runs.setdefault((run["config"], run["peer"]), []).append(run["median_us"])

ORDER = ["S", "M", "L", "CNN-S", "CNN-M"]
configs = sorted({c for c, _ in runs}, key=lambda c: ORDER.index(c) if c in ORDER else len(ORDER))
peers = sorted({p for _, p in runs if p != "tapegrad"})


def table(title, reduce):
    print(f"\n{title}\n")
    print("| size | tapegrad | " + " | ".join(peers) + " | fastest peer / tapegrad |")
    print("|---" * (len(peers) + 3) + "|")
    for config in configs:
        ours = runs.get((config, "tapegrad"))
        theirs = {p: reduce(runs[(config, p)]) for p in peers if (config, p) in runs}
        cells = [f"{theirs[p]:,.0f}" if p in theirs else "–" for p in peers]
        ratio = "–"
        if ours and theirs:
            fastest = min(theirs, key=theirs.get)
            ratio = f"{theirs[fastest] / reduce(ours):.2f} ({fastest})"
        mine = f"{reduce(ours):,.0f}" if ours else "–"
        print(f"| {config} | {mine} | " + " | ".join(cells) + f" | {ratio} |")


rounds = max(len(v) for v in runs.values()) if runs else 0
table(f"Best median over {rounds} rounds, microseconds per step", min)
table(f"Median over {rounds} rounds, microseconds per step", statistics.median)
