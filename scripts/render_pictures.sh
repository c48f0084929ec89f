#!/usr/bin/env bash
# Redraws the guide's pictures from their DOT files (which `tests/pictures.rs` checks
# against the code): `TAPEGRAD_UPDATE_PICTURES=1 cargo test --test pictures` first if the
# tapes changed. Needs Graphviz (`apt-get install graphviz`).
set -euo pipefail
cd "$(dirname "$0")/../docs/img"
for dot_file in *.dot; do
    dot -Tsvg "$dot_file" -o "${dot_file%.dot}.svg"
    echo "drew ${dot_file%.dot}.svg"
done
