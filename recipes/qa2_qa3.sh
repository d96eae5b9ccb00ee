#!/usr/bin/env bash
# Reproduces the QA2 / QA3 runs of benchmarks/training.md on a CPU, one torch thread per run:
#
#   1. qrag-finetune's supervised warm start with own-mistake states (--warm-start-mistakes 0.5), 2,000 steps
#      of 8 episodes on 10,000 (QA2) / all (QA3) training questions in 1k-token documents, evaluated every
#      250 steps on the 100 BabiLong test documents at 4k and at 32k tokens (greedy, T = 4);
#   2. the same warm start without own-mistake states (QA2: runs/qa2_ws, QA3: runs/qa3_ws);
#   3. soft Q-learning (docs/method.md §4, sparse reward) for 150 steps from each model of step 1, to see whether RL
#      after the warm start improves on the warm start alone;
#   4. the tables and plots benchmarks/results/training_qa{2,3}{,_soft_q}.{csv,md,png}.
#
# Each run takes 5-15 minutes on one core of the 2-core machine; the two tasks can run side by side.
set -euo pipefail
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0; fi
if [ $# -gt 0 ]; then echo "qa2_qa3.sh: error: takes no arguments (--help explains)" >&2; exit 2; fi
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
WARM=(--warm-start-steps 2000 --rl-steps 0 --batch-size 8 --eval-every 250 --checkpoint-every 250 --no-progress)
for TASK in qa2 qa3; do
  bash recipes/babilong.sh "$TASK" "${TASK}_final" "${WARM[@]}" --warm-start-mistakes 0.5
  bash recipes/babilong.sh "$TASK" "${TASK}_ws" "${WARM[@]}"
  bash recipes/babilong.sh "$TASK" "${TASK}_final_soft_q" --init-from "runs/${TASK}_final/model" \
    --warm-start-steps 0 --rl-steps 150 --lr 1e-5 --batch-size 8 --eval-every 50 --checkpoint-every 50 --no-progress
  .venv/bin/python recipes/learning_curves.py \
    --run "warm start + own-mistake states (0.5)=runs/${TASK}_final" \
    --run "warm start alone=runs/${TASK}_ws" \
    --out "benchmarks/results/training_${TASK}" \
    --title "BabiLong ${TASK^^}: qrag-finetune warm start, training documents of 1k tokens, batch 8 (test n = 100)"
  .venv/bin/python recipes/learning_curves.py \
    --run "soft-Q (sparse reward, lr 1e-5) after the warm start=runs/${TASK}_final_soft_q" \
    --out "benchmarks/results/training_${TASK}_soft_q" \
    --title "BabiLong ${TASK^^}: soft Q-learning after the warm start (step 0 = the warm-started model; test n = 100)"
done
