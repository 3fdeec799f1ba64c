#!/usr/bin/env bash
# Set up .venv with everything the package, its tests and its demo need. Idempotent.
# torch is pinned first: on the CI machines 2.13.0 is a CPU build on local disk; elsewhere pip
# fetches it. Then the package itself (editable) with its test extra (triton, pytest, ...) and
# the bench extra (coreai-opt 0.3.0, the reference that tests and benchmarks compare against)
# and the coreai extra (coreai-torch, for the Core AI export backend and its tests).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test,bench,coreai]"
