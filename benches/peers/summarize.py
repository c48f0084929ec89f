"""Reads the JSON lines of compare.sh (one per peer, size and round) and prints, per size, each
peer's best median over the rounds and tapegrad's ratio to the fastest peer: the fastest peer's
median over tapegrad's, so above 1 means tapegrad is faster. Standard library only."""
import json
import sys

best = {}  # (config, peer) -> best median in microseconds
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    run = json.loads(line)
    key = (run["config"], run["peer"])
    best[key] = min(best.get(key, float("inf")), run["median_us"])

configs = sorted({c for c, _ in best}, key="SML".index)
peers = sorted({p for _, p in best if p != "tapegrad"})
print("| size | tapegrad | " + " | ".join(peers) + " | fastest peer / tapegrad |")
print("|---" * (len(peers) + 3) + "|")
for config in configs:
    ours = best.get((config, "tapegrad"))
    theirs = {p: best[(config, p)] for p in peers if (config, p) in best}
    cells = [f"{theirs[p]:,.0f}" if p in theirs else "–" for p in peers]
    if ours and theirs:
        fastest = min(theirs, key=theirs.get)
        ratio = f"{theirs[fastest] / ours:.2f} ({fastest})"
    else:
        ratio = "–"
    print(f"| {config} | {ours:,.0f} | " + " | ".join(cells) + f" | {ratio} |" if ours else "")
