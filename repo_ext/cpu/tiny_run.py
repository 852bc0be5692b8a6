"""A tiny GRPO run of stock ``python -m verl.trainer.main_ppo +preset=cpu``: data, reward, command.

Used by the end-to-end tests (tests/cpu), the benchmark (benchmarks/bench_cpu_rollout.py) and
anyone who wants a one-minute smoke run on CPU::

    from repo_ext.assets.tiny_model import build_tiny_model
    from repo_ext.cpu.tiny_run import write_arithmetic_parquet, tiny_grpo_overrides, run_main_ppo

    model = build_tiny_model("/tmp/tiny")
    train = write_arithmetic_parquet("/tmp/tiny_data/train.parquet", num_prompts=8)
    result = run_main_ppo(tiny_grpo_overrides(model, train, "/tmp/run"), timeout_s=300, log_path="/tmp/run.log")

:func:`run_main_ppo` runs verl in its own process group with a hard timeout: when verl (Ray) hangs
or overruns, the whole group is killed and :class:`MainPPOTimeout` says so, with the log's tail.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from repo_ext.process_group import kill_process_group

__all__ = [
    "DATA_SOURCE",
    "write_arithmetic_parquet",
    "reward_function_path",
    "tiny_grpo_overrides",
    "run_main_ppo",
    "MainPPOResult",
    "MainPPOTimeout",
    "MainPPOFailed",
]

DATA_SOURCE = "repo_ext_tiny_arithmetic"


def write_arithmetic_parquet(path: str | Path, num_prompts: int, seed: int = 0) -> Path:
    """Write ``num_prompts`` one-step additions in verl's RL dataset schema to a parquet file.

    Columns: ``data_source``, ``prompt`` (chat messages), ``ability``, ``reward_model``
    (``{"style": "rule", "ground_truth": str}``), ``extra_info`` (``{"index": int, "split": str}``).
    """
    import pandas as pd

    if num_prompts < 1:
        raise ValueError(f"write_arithmetic_parquet: num_prompts must be >= 1, got {num_prompts}")
    rng = random.Random(seed)
    rows = []
    for index in range(num_prompts):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append(
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": f"What is {a} + {b}? Answer with #### followed by the number."}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(a + b)},
                "extra_info": {"index": index, "split": "train"},
            }
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path


def reward_function_path() -> Path:
    """File holding ``compute_score`` for ``reward.custom_reward_function.path``."""
    return Path(__file__).with_name("tiny_reward.py")


def tiny_grpo_overrides(
    model_path: str | Path,
    train_file: str | Path,
    output_dir: str | Path,
    *,
    steps: int = 2,
    prompts_per_step: int = 4,
    samples_per_prompt: int = 2,
    response_length: int = 16,
    use_kl_loss: bool = False,
) -> list[str]:
    """Hydra overrides for a short plain-GRPO run of ``main_ppo`` with ``+preset=cpu``.

    ``use_kl_loss=True`` adds the reference model (KL loss against it), otherwise no ref model is built.
    """
    rows = prompts_per_step * samples_per_prompt
    overrides = [
        "+preset=cpu",
        "algorithm.adv_estimator=grpo",
        "algorithm.use_kl_in_reward=False",
        f"data.train_files={train_file}",
        f"data.val_files={train_file}",
        f"data.train_batch_size={prompts_per_step}",
        "data.max_prompt_length=64",
        f"data.max_response_length={response_length}",
        f"actor_rollout_ref.model.path={model_path}",
        f"actor_rollout_ref.rollout.n={samples_per_prompt}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={prompts_per_step}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={rows}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={rows}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={rows}",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        f"actor_rollout_ref.actor.use_kl_loss={use_kl_loss}",
        "actor_rollout_ref.actor.kl_loss_coef=0.01",
        "actor_rollout_ref.actor.entropy_coeff=0",
        f"reward.custom_reward_function.path={reward_function_path()}",
        "reward.custom_reward_function.name=compute_score",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        f"trainer.total_training_steps={steps}",
        "trainer.total_epochs=100",
        "trainer.project_name=repo_ext_cpu",
        "trainer.experiment_name=tiny_grpo",
        f"trainer.default_local_dir={Path(output_dir) / 'checkpoints'}",
    ]
    return overrides


@dataclass
class MainPPOResult:
    returncode: int
    seconds: float
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class MainPPOTimeout(RuntimeError):
    pass


class MainPPOFailed(RuntimeError):
    pass


def _tail(path: Path, chars: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "<no log>"


def run_main_ppo(
    overrides: list[str],
    *,
    timeout_s: float,
    log_path: str | Path,
    env: dict | None = None,
    check: bool = True,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> MainPPOResult:
    """Run ``python -m verl.trainer.main_ppo <overrides>`` with a hard wall-clock limit.

    The run gets its own process group (Ray's local cluster included),
    so killing it on timeout leaves nothing behind and does not touch other Ray clusters.
    Raises :class:`MainPPOTimeout` past ``timeout_s`` and, with ``check``, :class:`MainPPOFailed`
    on a non-zero exit; both carry the tail of the log. ``on_start`` receives the process right after
    it starts (e.g. to sample the memory of its process tree).
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    run_env = dict(os.environ)
    run_env.update({"HYDRA_FULL_ERROR": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
    run_env.setdefault("RAY_DEDUP_LOGS", "0")
    if env:
        run_env.update(env)
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", *overrides]
    start = time.monotonic()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=run_env, start_new_session=True)
        if on_start is not None:
            on_start(proc)
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_process_group(proc)
            raise MainPPOTimeout(
                f"verl main_ppo did not finish within {timeout_s:.0f} s and was killed. "
                f"Log {log_path}, last lines:\n{_tail(log_path)}"
            ) from None
        finally:
            # Ray's own daemons (raylet, gcs) may outlive the driver inside the group
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    result = MainPPOResult(returncode=returncode, seconds=time.monotonic() - start, log_path=log_path)
    if check and returncode != 0:
        raise MainPPOFailed(f"verl main_ppo exited with code {returncode}. Log {log_path}, last lines:\n{_tail(log_path)}")
    return result
