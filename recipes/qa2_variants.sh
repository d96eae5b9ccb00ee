#!/usr/bin/env bash
# Reproduces the small QA2 comparisons of benchmarks/training.md (500 training documents of 1k tokens, 4k test):
# frozen vs trained action transformer at the same budget, soft-Q variants after a 300-step warm start, and
# warm-start variants. Each run writes runs/<name>/metrics.csv; the tables/plots come from learning_curves.py.
set -euo pipefail
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0; fi
if [ $# -gt 0 ]; then echo "qa2_variants.sh: error: takes no arguments (--help explains)" >&2; exit 2; fi
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DATA=runs/data
mkdir -p "$DATA"
[ -s "$DATA/qa2_train_1k_500.jsonl" ] || .venv/bin/qrag-data babilong --task qa2 --split train --length 1k --n 500 \
  --out "$DATA/qa2_train_1k_500.jsonl"
[ -s "$DATA/qa2_test_4k.jsonl" ] || .venv/bin/qrag-data babilong --task qa2 --split test --length 4k \
  --out "$DATA/qa2_test_4k.jsonl"
finetune() {
  local name=$1
  shift
  .venv/bin/qrag-finetune --data "$DATA/qa2_train_1k_500.jsonl" --eval-data "$DATA/qa2_test_4k.jsonl" \
    --out "runs/$name" --threads 1 --checkpoint-every 0 --no-progress "$@"
}
# Frozen (default) vs trained action transformer, warm start then soft Q-learning with T = 4.
finetune pilot --warm-start-steps 300 --rl-steps 100 --episode-steps 4 --eval-every 100
finetune cmp_full --no-freeze-action-encoder --warm-start-steps 6 --rl-steps 4 --episode-steps 4 --eval-every 0
# The warm-started model every soft-Q variant starts from.
finetune ws300 --warm-start-steps 300 --rl-steps 0 --eval-every 0
soft_q() {
  local name=$1
  shift
  finetune "$name" --init-from runs/ws300/model --warm-start-steps 0 --rl-steps 100 --eval-every 50 "$@"
}
soft_q rlv_T2_sparse
soft_q rlv_T2_perfact --reward per_fact
soft_q rlv_T4_sparse --episode-steps 4
soft_q rlv_T2_sparse_lr1e-5 --lr 1e-5
soft_q rlv_T2_sparse_vhead --value-head
soft_q rlv_T2_sparse_vhead_lr1e-2 --value-head --value-head-lr 1e-2
# Warm-start variants.
finetune ws300_m50 --warm-start-steps 300 --rl-steps 0 --eval-every 100 --warm-start-mistakes 0.5
finetune ws300_ell18 --warm-start-steps 300 --rl-steps 0 --eval-every 100 --delta 20 --ell 18
.venv/bin/python recipes/learning_curves.py \
  --run "frozen action encoder (300 warm-start + 100 soft-Q steps)=runs/pilot" \
  --run "full action encoder (6 warm-start + 4 soft-Q steps)=runs/cmp_full" \
  --out benchmarks/results/training_frozen_vs_full \
  --title "QA2, 500 training documents (1k tokens): frozen vs trained action transformer, same ~11-minute budget"
.venv/bin/python recipes/learning_curves.py \
  --run "warm start 300 steps (start of the soft-Q rows)=runs/ws300" \
  --run "soft-Q sparse, T = support size, lr 5e-5=runs/rlv_T2_sparse" \
  --run "soft-Q per-fact, T = support size, lr 5e-5=runs/rlv_T2_perfact" \
  --run "soft-Q sparse, T = 4, lr 5e-5=runs/rlv_T4_sparse" \
  --run "soft-Q sparse, T = support size, lr 1e-5=runs/rlv_T2_sparse_lr1e-5" \
  --run "soft-Q sparse + value head (lr 1e-3)=runs/rlv_T2_sparse_vhead" \
  --run "soft-Q sparse + value head (lr 1e-2)=runs/rlv_T2_sparse_vhead_lr1e-2" \
  --run "warm start 300 steps, mistakes 0.5=runs/ws300_m50" \
  --run "warm start 300 steps, delta 20 / ell 18=runs/ws300_ell18" \
  --out benchmarks/results/training_qa2_variants \
  --title "QA2, 500 training documents: soft-Q after a 300-step warm start, and warm-start variants (4k test, n = 100)"
