#!/usr/bin/env bash
# One short GPU run (under 8 minutes), side by side at 16x112x112:
# 1. training throughput per method, full client step against compute only (target >= 0.9):
#    fp32, then bf16 + channels-last (runtime=gpu), then with torch.compile (CtP only:
#    compiling costs minutes);
# 2. the decoder against the model's step rate (benchmarks/decoder.py): decord with 0, 3 and 15
#    loader workers (15 = 5 packed clients x 3 workers, conf/runtime/gpu.yaml), the frame cache
#    (runtime.decode_backend=cache), and the step rate at batch 4 and 20;
# 3. retrieval feature clips/s (fp32, bf16 + channels-last), then one federated round of 5
#    clients at input=paper with runtime=gpu, end to end from the frame cache, and the
#    projected wall time of the 540-round protocol (benchmarks/paper_round.py).
# Each step has its own time limit, so one slow step cannot take the others' time.
#
# A lent GPU machine has PyTorch but no network: the other packages come as wheels installed
# into /tmp/fedvssl-site beforehand (benchmarks/device_wheels.py; benchmarks/README.md: "GPU
# check"). With a network, pip installs them here instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v python >/dev/null; then  # such machines may have python3 alone
    mkdir -p /tmp/fedvssl-bin && ln -sf "$(command -v python3)" /tmp/fedvssl-bin/python
    export PATH="/tmp/fedvssl-bin:$PATH"
fi
export PYTHONPATH="/tmp/fedvssl-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
imports() { python -c "import flwr, ray, hydra, omegaconf, decord, av, fedvssl.main" 2>&1 | tail -1; }
if [ -n "$(imports)" ] && [ ! -d /tmp/fedvssl-site ]; then
    python -m pip install -q --retries 1 --timeout 10 -c constraints.txt -e . >/dev/null 2>&1 || true
fi
if [ -n "$(imports)" ]; then
    echo "gpu.sh: $(imports)"
    echo "gpu.sh: install the wheels of benchmarks/device_wheels.py into /tmp/fedvssl-site first"
    exit 1
fi
export FLWR_HOME=$(mktemp -d) FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
nvidia-smi --query-gpu=name,memory.total --format=csv
nproc
step() {  # step <seconds> <command...>: run it, and say so if it ran out of time
    local limit=$1
    shift
    timeout "$limit" "$@" || echo "gpu.sh: '$*' stopped (exit $?; limit ${limit} s)"
}
# The round's Kinetics-shaped videos are rendered on one core while the GPU steps run.
python -m benchmarks.paper_round --prepare-only > /tmp/fedvssl-paper-round-prepare.log 2>&1 &
prepare=$!
step 60 python -m benchmarks.train_throughput --device cuda --workers 8 --batch-size 4 --seconds 6
step 60 python -m benchmarks.train_throughput --device cuda --workers 8 --batch-size 4 --seconds 6 --amp --channels-last
step 80 python -m benchmarks.train_throughput --device cuda --workers 8 --batch-size 4 --seconds 6 --amp --channels-last \
    --compile --methods ctp
step 140 python -m benchmarks.decoder --device cuda --seconds 6 --workers 0 3 15
wait "$prepare" || true
cat /tmp/fedvssl-paper-round-prepare.log
step 120 python -m benchmarks.paper_round --runtime gpu --decode-backend cache --seconds 5
