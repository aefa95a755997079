#!/usr/bin/env bash
# One short GPU run (a few minutes): training throughput per method at 16x112x112,
# full client step against compute only: fp32, bf16 + channels-last (runtime=gpu), and with torch.compile.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -c constraints.txt -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv
python -m benchmarks.train_throughput --device cuda --workers 8 --batch-size 4 --seconds 20
python -m benchmarks.train_throughput --device cuda --workers 8 --batch-size 4 --seconds 20 --amp --channels-last
python -m benchmarks.train_throughput --device cuda --workers 8 --batch-size 4 --seconds 20 --amp --channels-last --compile
