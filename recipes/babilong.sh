#!/usr/bin/env bash
# Reproduces the BabiLong fine-tuning runs of benchmarks/training.md on a CPU (qrag-finetune; the method: docs/method.md).
#
#   bash recipes/babilong.sh qa2 RUN_NAME [extra qrag-finetune flags...]
#
# Builds (once) the training set (TRAIN_N examples of en-10k train questions, 1k-token documents) and the
# 100 BabiLong test documents at 4k and 32k tokens, then fine-tunes all-MiniLM-L6-v2 into runs/RUN_NAME,
# evaluating fact EM (greedy, T = 4) on both test sets during training. Content embeddings come from the
# shared cache (run `qrag-data warm-cache` first, or the haystack sentences are encoded on the fly).
set -euo pipefail
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0; fi
if [ $# -lt 2 ]; then
  echo "babilong.sh: error: needs TASK RUN_NAME, e.g. bash recipes/babilong.sh qa2 my_run (--help explains)" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
TASK="$1"
RUN="$2"
shift 2
TRAIN_N="${TRAIN_N:-10000}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DATA=runs/data
mkdir -p "$DATA"
TRAIN="$DATA/${TASK}_train_1k_${TRAIN_N}.jsonl"
[ -s "$TRAIN" ] || .venv/bin/qrag-data babilong --task "$TASK" --split train --length 1k --n "$TRAIN_N" --out "$TRAIN"
for LENGTH in 4k 32k; do
  TEST="$DATA/${TASK}_test_${LENGTH}.jsonl"
  [ -s "$TEST" ] || .venv/bin/qrag-data babilong --task "$TASK" --split test --length "$LENGTH" --out "$TEST"
done
# One torch thread: on this 2-core machine shared with other jobs it is ~4x faster than two (measured).
# Step counts are chosen for at most 30 minutes of training CPU time (metrics.csv: train_cpu_seconds);
# wall time (train_seconds) is longer while other jobs share the machine.
.venv/bin/qrag-finetune --data "$TRAIN" \
  --eval-data "$DATA/${TASK}_test_4k.jsonl" --eval-data "$DATA/${TASK}_test_32k.jsonl" \
  --out "runs/$RUN" --threads 1 "$@"
