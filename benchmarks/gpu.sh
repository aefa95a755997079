#!/usr/bin/env bash
# One short GPU run (under 8 minutes), both sides of the input pipeline at 16x112x112:
# 1. training throughput per method, full client step against compute only: fp32, then
#    bf16 + channels-last (runtime=gpu), then with torch.compile (CtP only: compiling costs minutes);
# 2. the decoder against the model's step rate (benchmarks/decoder.py): decord with 0, 3 and 15
#    loader workers (15 = 5 packed clients x 3 workers, conf/runtime/gpu.yaml), the frame cache
#    backend (runtime.decode_backend=cache) and the .npy prototype with 0 and 15, and the step
#    rate at batch 4 and 20.
# Each step has its own time limit, so one slow step cannot take the others' time.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -c constraints.txt -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv
nproc
step() {  # step <seconds> <command...>: run it, and say so if it ran out of time
    local limit=$1
    shift
    timeout "$limit" "$@" || echo "gpu.sh: '$*' stopped (exit $?; limit ${limit} s)"
}
step 90 python -m benchmarks.train_throughput --device cuda --workers 8 --batch-size 4 --seconds 10
step 90 python -m benchmarks.train_throughput --device cuda --workers 8 --batch-size 4 --seconds 10 --amp --channels-last
step 110 python -m benchmarks.train_throughput --device cuda --workers 8 --batch-size 4 --seconds 10 --amp --channels-last \
    --compile --methods ctp
step 150 python -m benchmarks.decoder --device cuda --seconds 8 --workers 0 3 15
