#!/usr/bin/env bash
# The same-run comparison of docs/performance.md: tapegrad and each installed peer, one after
# the other on the same two cores, for $ROUNDS rounds (default 3) interleaved so that a slow
# spell of this shared machine hits everyone alike; then the table of each one's best median
# and tapegrad's ratio to the fastest peer (summarize.py). Peers that are not installed are
# skipped with a note. JAX/Flax and PyTorch are imported by $JAX_PYTHON and $TORCH_PYTHON
# (default python3); dfdx builds in benches/peers/dfdx (about a minute, the first time).
#
#     benches/peers/compare.sh            # S, M and L
#     benches/peers/compare.sh CNN-S CNN-M  # the CNN: tapegrad, JAX + Flax linen, PyTorch
#     ROUNDS=5 benches/peers/compare.sh S M
set -u
cd "$(dirname "$0")/../.."
sizes=("$@")
[ ${#sizes[@]} -eq 0 ] && sizes=(S M L)
jax_python=${JAX_PYTHON:-python3}
torch_python=${TORCH_PYTHON:-python3}
log=$(mktemp)
echo "# $(date -u +%FT%TZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"

# tapegrad's step is timed by running the bench binary directly, as the peers' scripts are
# run: as a child of `cargo bench` the same binary measured up to 1.5x slower on this
# project's VM, for reasons not found (docs/performance.md, "The CNN step").
step_times=$(cargo bench --bench step_times --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "step_times" and m.get("executable"):
        print(m["executable"])')
have_jax=$("$jax_python" -c "import jax, flax, optax" 2>/dev/null && echo yes)
have_torch=$("$torch_python" -c "import torch" 2>/dev/null && echo yes)
have_dfdx=$( (cd benches/peers/dfdx && cargo build --release -q 2>/dev/null) && echo yes)
[ -n "$have_jax" ] || echo "# JAX and Flax skipped: jax, flax and optax not importable by $jax_python"
[ -n "$have_torch" ] || echo "# PyTorch skipped: torch not importable by $torch_python"
[ -n "$have_dfdx" ] || echo "# dfdx skipped: it did not build"

# One fresh process per (framework, size), as workload.md section 8 asks.
for round in $(seq "${ROUNDS:-3}"); do
  echo "# round $round" >&2
  for size in "${sizes[@]}"; do
    taskset -c 0,1 "$step_times" --bench "$size" 2>/dev/null
    (
      cd benches/peers
      case "$size" in
        CNN-*)  # the CNN of workload section 10: JAX + Flax linen and PyTorch
          [ -n "$have_jax" ] && taskset -c 0,1 "$jax_python" jax_cnn_step.py "$size" 2>/dev/null
          [ -n "$have_torch" ] && taskset -c 0,1 "$torch_python" torch_cnn_step.py "$size" 2>/dev/null
          ;;
        *)
          if [ -n "$have_jax" ]; then
            taskset -c 0,1 "$jax_python" jax_train_step.py "$size" 2>/dev/null
            taskset -c 0,1 "$jax_python" nnx_train_step.py "$size" 2>/dev/null
          fi
          [ -n "$have_torch" ] && taskset -c 0,1 "$torch_python" torch_train_step.py "$size" 2>/dev/null
          [ -n "$have_dfdx" ] && (cd dfdx && taskset -c 0,1 cargo run --release -q -- "$size")
          ;;
      esac
    )
  done | tee -a "$log"
done
python3 benches/peers/summarize.py < "$log"
rm -f "$log"
