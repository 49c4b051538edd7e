#!/usr/bin/env bash
# The ResNet and VGG recovery tables on one GPU: four bench_recovery.py runs side by side (two models x
# {rram-mlc-4bit: every chain, rram-sliced-1bit: the write-verify chains}). Each result file is rewritten
# after every chain, so a run stopped by LIMIT seconds keeps what it finished.
# Usage: bash bench/recovery_gpu.sh OUT_DIR [LIMIT_S]
set -u
out=${1:?output folder}; limit=${2:-540}
mlc="map-correct+self-tune+chip-kd,map-correct:remap+chip-kd,chip-kd,vat,self-tune,map-correct,kd+rsa,map-correct:remap"
mlc="$mlc,rsa,kd,qvat,vat:censor,vat+chip-kd,map-correct+chip-kd,write-verify,write-verify:10"
swim="write-verify,write-verify:10,write-verify:10-magnitude,write-verify:10-random,write-verify:10+self-tune"
export OMP_NUM_THREADS=4 PYTHONUNBUFFERED=1
for m in resnet vgg; do
  timeout "$limit" python3 bench/bench_recovery.py --model "$m" --settings rram-mlc-4bit --chains "$mlc" \
    --out "$out" > "$out/log_${m}_mlc.txt" 2>&1 &
  timeout "$limit" python3 bench/bench_recovery.py --model "$m" --settings "rram-sliced-1bit (SWIM)" \
    --chains "$swim" --tag _swim --out "$out" > "$out/log_${m}_swim.txt" 2>&1 &
done
wait
tail -n 30 "$out"/log_*.txt
