#!/usr/bin/env bash
# Trains the sentiment model and evaluates it on the held-out fifth, side by
# side with VADER (docs/text.md). Needs python3 (>= 3.10), cargo and PyPI.
#   enrich/train/run.sh              # train, write enrich/models/, evaluate
#   enrich/train/run.sh --no-write   # evaluate the committed model only
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/target/text-model/venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r "$root/enrich/train/requirements.txt"
fi
cd "$root"
exec "$venv/bin/python" enrich/train/train.py "$@"
