#!/usr/bin/env bash
# Issue #15's GPU check, prepared for a session that the `device` tool lends a GPU (one call, under 10 minutes):
# tests/test_devices.py on CUDA, the LeNet-5 Monte Carlo against plain PyTorch (bench_core.py, automatic chip
# blocks), LeNet-5 and ResNet-18 (bench_models.py), and a LeNet-5 vat epoch against plain training
# (bench_training.py). One log and the benches' JSON files land in OUT.
#
# The GPU machine has PyTorch and every dependency but no Fashion-MNIST, so carry it. Once, on the CPU host:
#   mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/ && echo /.data/ >> .git/info/exclude
# then call `device` run with carry [".data"], timeout_s 600, command: bash bench/gpu_check.sh "$OUT"
set -u
out=${1:?output folder}
export PYTHONPATH=src NVCIM_DATA=${NVCIM_DATA:-.data} PYTHONUNBUFFERED=1
log="$out/log.txt"
step() {  # step SECONDS NAME COMMAND...: run with a time limit, log everything, note the exit status
  local limit=$1 name=$2; shift 2
  echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s)" >> "$log"
  timeout "$limit" "$@" >> "$log" 2>&1
  echo "=== $name: exit $?" >> "$log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$log" 2>&1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" >> "$log" 2>&1
step 200 "tests/test_devices.py" python3 -m pytest -q -p no:cacheprovider tests/test_devices.py
step 120 "bench_core (LeNet-5, 100 chips)" python3 bench/bench_core.py --out "$out"
step 170 "bench_models (LeNet-5, ResNet-18)" python3 bench/bench_models.py --models lenet5 resnet18 --out "$out"
step 90 "bench_training (LeNet-5 vat epoch)" python3 bench/bench_training.py --model lenet5 --out "$out"
grep -E "^===|passed|failed|ratio" "$log"
