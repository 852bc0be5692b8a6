"""Faults and bad data in a real RePO run (stock ``main_ppo``, tiny model, CPU): nothing lost or duplicated.

Two verl runs, 4 prompts per step, 2 samples each, checkpoint every 2 steps:

- run A starts fresh and is killed with SIGKILL (its whole process group: driver, Ray and every
  worker) in the middle of step 3, after checkpoint 2 was written and before step 3's update;
- a half-written checkpoint 3 is then left on disk (truncated actor/repo_store.pt, partial actor/,
  tracker file still at 2), as a kill during step 3's save would leave it;
- run B resumes and trains steps 3 and 4.

The data carries bad rows on every step: one prompt appears twice in each batch (duplicate), one
prompt is longer than ``data.max_prompt_length`` (verl left-truncates it), one prompt's reward
function fails (NaN), and the random tiny model's responses run into ``max_response_length``.

What is checked, against stores rebuilt here from the rows each step actually trained on (the
trainer's debugging dump): the checkpoint-2 store, the store run B restored, and the final
checkpoint-4 store are exact (bit-for-bit entries, counters); the step counter resumes at 3; the
killed step's rows are in no store; bad rows are counted and never stored; advantages and losses
stay finite; no process of either run survives.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch

from repo_ext.algorithm.store import ReplayStore
from repo_ext.cpu.tiny_run import DATA_SOURCE, run_main_ppo, tiny_grpo_overrides
from repo_ext.integration.store_checkpoint import STORE_FILENAME, load_store_state, store_path

from fault_reward import NAN_GROUND_TRUTH  # tests/reliability is on sys.path (pytest rootdir-relative import)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

RUN_TIMEOUT_S = 480
MAX_RESPONSE = 16
TRACKER = "latest_checkpointed_iteration.txt"
REWARD_FILE = Path(__file__).with_name("fault_reward.py")
MARK_ENV = "REPO_EXT_FAULT_TEST_MARK"
LONG_PROMPT = "Please read the question carefully and think step by step before you answer. " * 3


def _question(a, b, prefix=""):
    return [{"role": "user", "content": f"{prefix}What is {a} + {b}? Answer with #### followed by the number."}]


def _write_data(path: Path) -> Path:
    rows = [
        (_question(6, 6), "12"),
        (_question(0, 4), NAN_GROUND_TRUTH),  # the reward function fails on this prompt
        (_question(8, 7, LONG_PROMPT), "15"),  # ~260 tokens, over max_prompt_length=64
        (_question(6, 6), "12"),  # the first prompt again: a duplicate in every batch
    ]
    frame = pd.DataFrame(
        [
            {"data_source": DATA_SOURCE, "prompt": prompt, "ability": "math",
             "reward_model": {"style": "rule", "ground_truth": truth}, "extra_info": {"index": i, "split": "train"}}
            for i, (prompt, truth) in enumerate(rows)
        ]
    )
    frame.to_parquet(path)
    return path


def _overrides(model, train, out):
    ov = tiny_grpo_overrides(model, train, out, steps=4, prompts_per_step=4, samples_per_prompt=2,
                             response_length=MAX_RESPONSE)
    ov = [o for o in ov if not o.startswith(("algorithm.adv_estimator", "reward.custom_reward_function.path"))]
    return ov + [
        "algorithm=repo",
        "algorithm.repo.num_replays=2",
        "algorithm.repo.min_cache_to_replay=2",
        "algorithm.repo.max_cache_size=4",
        f"reward.custom_reward_function.path={REWARD_FILE}",
        "trainer.save_freq=2",
        "trainer.logger=[console,file]",
    ]


def _marked_processes(mark: str) -> list[int]:
    """Live processes started with this run's marker in their environment (Ray daemons and workers inherit it)."""
    needle = f"{MARK_ENV}={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:  # gone, or a zombie
                pass
    return found


def _assert_no_survivors(mark: str) -> None:
    deadline = time.monotonic() + 30
    while (left := _marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        for pid in left:  # never leak them into the rest of the suite
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise AssertionError(f"processes of the killed run survived: {left}")


def _run(tmp: Path, name: str, overrides, kill_when: Path | None = None):
    mark = uuid.uuid4().hex
    dump = tmp / f"dump_{name}"
    metrics = tmp / f"{name}.jsonl"
    env = {"REPO_EXT_DUMP_DIR": str(dump), "VERL_FILE_LOGGER_PATH": str(metrics), MARK_ENV: mark}
    killed = threading.Event()
    most_marked = [0]  # how many processes carried the marker at once: the survivor check is not vacuous

    def watch(proc):
        polls = 0
        while proc.poll() is None:
            if kill_when is not None and kill_when.exists():
                os.killpg(proc.pid, signal.SIGKILL)  # no cleanup of any kind, like a node failure
                killed.set()
                return
            if polls % 40 == 0:
                most_marked[0] = max(most_marked[0], len(_marked_processes(mark)))
            polls += 1
            time.sleep(0.05)

    result = run_main_ppo(
        overrides, timeout_s=RUN_TIMEOUT_S, log_path=tmp / f"{name}.log", env=env, check=kill_when is None,
        on_start=lambda proc: threading.Thread(target=watch, args=(proc,), daemon=True).start(),
    )
    _assert_no_survivors(mark)
    assert most_marked[0] >= 5, f"only {most_marked[0]} marked processes seen: Ray did not inherit {MARK_ENV}"
    if kill_when is not None:
        assert killed.is_set(), (
            f"run {name} ended (code {result.returncode}) before {kill_when.name} appeared:\n{result.log()[-4000:]}"
        )
        assert result.returncode == -signal.SIGKILL
    logged = {}
    if metrics.exists():
        logged = {rec["step"]: rec["data"] for rec in map(json.loads, metrics.read_text().splitlines())}
    print(f"run {name}: {result.seconds:.1f} s, exit code {result.returncode}, up to {most_marked[0]} processes")
    return {"dump": dump, "metrics": logged, "log": result.log(), "seconds": result.seconds}


@pytest.fixture(scope="module")
def fault_runs(tmp_path_factory):
    from repo_ext.assets.tiny_model import build_tiny_model

    tmp = tmp_path_factory.mktemp("faults")
    model = build_tiny_model(tmp / "tiny", seed=0)
    train = _write_data(tmp / "train.parquet")
    ckpt = tmp / "out" / "checkpoints"
    overrides = _overrides(model, train, tmp / "out")

    a = _run(tmp, "a", overrides, kill_when=tmp / "dump_a" / "step_3.pt")
    after_kill = {
        "tracker": (ckpt / TRACKER).read_text().strip(),
        "folders": sorted(p.name for p in ckpt.iterdir() if p.name.startswith("global_step_")),
    }
    # what a kill during step 3's save leaves: store half written, actor partial, tracker still at 2
    half = ckpt / "global_step_3"
    (half / "actor").mkdir(parents=True)
    store_bytes = store_path(ckpt / "global_step_2").read_bytes()
    store_path(half).write_bytes(store_bytes[: len(store_bytes) // 2])
    some_actor_file = next(
        p for p in (ckpt / "global_step_2" / "actor").rglob("*") if p.is_file() and p.name != STORE_FILENAME
    )
    shutil.copyfile(some_actor_file, half / "actor" / some_actor_file.name)

    b = _run(tmp, "b", overrides)
    return {"a": a, "b": b, "ckpt": ckpt, "after_kill": after_kill}


def _rows(dump: Path, step: int) -> dict:
    return torch.load(dump / f"step_{step}.pt", weights_only=False)


def _insert_order_key(ids: torch.Tensor, mask: torch.Tensor, seed: int = 42) -> bytes:
    """The trainer's within-step order (algorithm.repo.seed = 42): keyed BLAKE2b-64 of the ids bytes'
    length, the ids (int64) and the mask (int8), written out here."""
    raw = ids.numpy().astype("<i8").tobytes()
    h = hashlib.blake2b(key=seed.to_bytes(8, "little"), digest_size=8)
    h.update(len(raw).to_bytes(8, "little") + raw + mask.numpy().astype("i1").tobytes())
    return h.digest()


def _rebuild(steps) -> ReplayStore:
    """The store the trainer must hold after training on these (dump, step) in order: every on-policy
    row with a finite reward, a prompt's rows of one step in the order of a seeded hash of their
    responses (equal responses in batch order), with the log-probs the actor saw. Written out here."""
    store = ReplayStore(max_cache_size=4, min_cache_to_replay=2, max_store_bytes=4294967296, seed=42)
    for dump, step in steps:
        rows = _rows(dump, step)
        keys = [_insert_order_key(ids, mask) for ids, mask in zip(rows["responses"], rows["response_mask"])]
        for i in sorted(range(len(rows["off_policy"])), key=lambda i: (keys[i], i)):
            off = rows["off_policy"][i]
            reward = float(rows["rm_scores"][i].sum())
            if off or not math.isfinite(reward):
                continue
            store.insert(
                rows["prompt_key"][i], rows["responses"][i].numpy(), rows["old_log_probs"][i].numpy(), reward, step,
                loss_mask=rows["response_mask"][i].numpy(),
            )
    return store


def _content(store: ReplayStore, keys) -> dict:
    return {
        key: [(e.response_ids.tobytes(), e.behaviour_log_probs.tobytes(), e.reward, e.step) for e in store.entries(key)]
        for key in keys
    }


def _assert_same(store: ReplayStore, expected: ReplayStore, keys) -> None:
    assert store.stats() == expected.stats()
    assert _content(store, keys) == _content(expected, keys)


def _store() -> ReplayStore:
    return ReplayStore(max_cache_size=4, min_cache_to_replay=2, max_store_bytes=4294967296, seed=42)


def _loaded(state) -> ReplayStore:
    store = _store()
    store.load_state_dict(state)
    return store


def _loaded_checkpoint(step_dir, step: int) -> ReplayStore:
    store = _store()
    load_store_state(store, step_dir, expected_step=step)
    return store


def _keys(fault_runs) -> set:
    return {k for step in (1, 2) for k in _rows(fault_runs["a"]["dump"], step)["prompt_key"]}


def test_killed_mid_step_after_checkpoint_2(fault_runs):
    a = fault_runs["a"]
    assert sorted(a["metrics"]) == [1, 2]  # step 3 never finished
    assert fault_runs["after_kill"] == {"tracker": "2", "folders": ["global_step_2"]}
    saved = _loaded_checkpoint(fault_runs["ckpt"] / "global_step_2", 2)
    _assert_same(saved, _rebuild([(a["dump"], 1), (a["dump"], 2)]), _keys(fault_runs))


def test_resume_skips_the_half_written_checkpoint_and_restores_store_and_step(fault_runs):
    a, b = fault_runs["a"], fault_runs["b"]
    restored = _loaded(torch.load(b["dump"] / "restored_store_step_2.pt", weights_only=False))
    assert not (b["dump"] / "restored_store_step_3.pt").exists()
    _assert_same(restored, _rebuild([(a["dump"], 1), (a["dump"], 2)]), _keys(fault_runs))
    assert sorted(b["metrics"]) == [3, 4]  # the step counter continues from checkpoint 2
    # 6 rows stored per step (8 rows, 2 with a failed reward): nothing of the killed step 3, nothing lost
    assert [b["metrics"][s]["repo/store_num_inserted"] for s in (3, 4)] == [18, 24]


def test_final_store_has_every_trained_row_once(fault_runs):
    a, b = fault_runs["a"], fault_runs["b"]
    assert (fault_runs["ckpt"] / TRACKER).read_text().strip() == "4"
    final = _loaded_checkpoint(fault_runs["ckpt"] / "global_step_4", 4)
    expected = _rebuild([(a["dump"], 1), (a["dump"], 2), (b["dump"], 3), (b["dump"], 4)])
    _assert_same(final, expected, _keys(fault_runs))  # so none of run A's killed step-3 rows is in it


def test_bad_rows_are_counted_and_never_stored(fault_runs):
    a, b = fault_runs["a"], fault_runs["b"]
    truncated = 0  # the counters continue over the resume: run B restores them from checkpoint 2
    for run, steps in ((a, (1, 2)), (b, (3, 4))):
        for step in steps:
            m = run["metrics"][step]
            assert m["repo/bad_rows_nonfinite_reward"] == 2 * step  # 2 samples of the failing prompt per step
            assert m["repo/bad_rows_duplicate_prompt_groups"] == step  # one duplicated prompt per batch
            rows = _rows(run["dump"], step)
            # cut at max_response_length: stored, and counted (rows with a failed reward are not stored)
            truncated += sum(
                not off and len(resp) >= MAX_RESPONSE and math.isfinite(float(score.sum()))
                for resp, score, off in zip(rows["responses"], rows["rm_scores"], rows["off_policy"])
            )
            assert m.get("repo/bad_rows_truncated_at_max_length", 0) == truncated
            # a failed reward counts as 0 in the advantage: everything the actor saw is finite
            assert all(torch.isfinite(adv).all() for adv in rows["advantages"])
            assert math.isfinite(m["actor/pg_loss"])
    # 3 store keys would be 4 prompts minus the duplicate; the failing prompt is never stored
    assert b["metrics"][4]["repo/store_num_prompts"] == 2


def test_duplicate_and_overlong_prompts_are_replayed(fault_runs):
    a, b = fault_runs["a"], fault_runs["b"]
    assert "exceeds rollout.prompt_length=64; left-truncating" in a["log"]
    for run, step in ((a, 2), (b, 3), (b, 4)):
        rows = _rows(run["dump"], step)
        on = [k for k, off in zip(rows["prompt_key"], rows["off_policy"]) if not off]
        replayed = [k for k, off in zip(rows["prompt_key"], rows["off_policy"]) if off]
        counts = {k: on.count(k) for k in set(on)}
        duplicate = next(k for k, c in counts.items() if c == 4)  # 2 groups x 2 samples
        finite = {k for k, r, off in zip(rows["prompt_key"], rows["rm_scores"], rows["off_policy"])
                  if not off and math.isfinite(float(r.sum()))}
        long_prompt = (finite - {duplicate}).pop()
        # the duplicate gets replay once (not once per group); the truncated long prompt keeps its key
        assert sorted(replayed) == sorted([duplicate] * 2 + [long_prompt] * 2)
        assert run["metrics"][step]["repo/replayed_rows"] == 4
