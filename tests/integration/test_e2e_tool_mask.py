"""Multi-turn (tool-calling) responses are stored and replayed with their loss masks, end to end.

One 3-step RePO run on CPU with the tiny model (4 prompts x 2 samples, gate min_cache_to_replay=2,
so replay starts at step 2) whose rollout is a stand-in tool-calling agent loop
(``tool_mask_agent_loop``): every response is [assistant turn (mask 1)] [tool message (mask 0)]
[assistant turn (mask 1)]. The trainer's dump (REPO_EXT_DUMP_DIR) gives each step's rows as the
actor saw them; each replayed row is matched, by prompt and response ids, to the on-policy row of
an earlier step it was stored from. By hand (about 3 minutes)::

    flock /tmp/repo_e2e.lock .venv/bin/python -m pytest -p no:xdist -v tests/integration/test_e2e_tool_mask.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from repo_ext.algorithm.store import ReplayStore
from repo_ext.cpu.tiny_run import run_main_ppo, tiny_grpo_overrides, write_arithmetic_parquet
from repo_ext.integration.store_checkpoint import load_store_state
from tool_mask_agent_loop import TOOL_MESSAGE, agent_loop_overrides

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

STEPS = 3
RUN_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def tool_run(tmp_path_factory):
    from transformers import AutoTokenizer

    from repo_ext.assets.tiny_model import build_tiny_model

    tmp = tmp_path_factory.mktemp("tool_mask")
    model = build_tiny_model(tmp / "tiny", seed=0)
    train = write_arithmetic_parquet(tmp / "train.parquet", num_prompts=4)
    dump, metrics_path = tmp / "dump", tmp / "metrics.jsonl"
    ov = tiny_grpo_overrides(model, train, tmp / "out", steps=STEPS, prompts_per_step=4, samples_per_prompt=2,
                             response_length=32)
    ov = [o for o in ov if not o.startswith(("algorithm.adv_estimator", "trainer.save_freq"))]
    ov += [
        "algorithm=repo",
        "algorithm.repo.strategy=recent_k",
        "algorithm.repo.num_replays=2",
        "algorithm.repo.min_cache_to_replay=2",
        "algorithm.repo.max_cache_size=4",
        "algorithm.repo.skip_zero_advantage_rows=false",
        f"trainer.save_freq={STEPS}",
        "trainer.logger=[console,file]",
        *agent_loop_overrides(tmp / "agent_loops"),
    ]
    env = {"REPO_EXT_DUMP_DIR": str(dump), "VERL_FILE_LOGGER_PATH": str(metrics_path)}
    run_main_ppo(ov, timeout_s=RUN_TIMEOUT_S, log_path=tmp / "run.log", env=env)
    metrics = {rec["step"]: rec["data"] for rec in map(json.loads, metrics_path.read_text().splitlines())}
    rows = {step: torch.load(dump / f"step_{step}.pt", weights_only=False) for step in range(1, STEPS + 1)}
    tool_ids = AutoTokenizer.from_pretrained(model).encode(TOOL_MESSAGE, add_special_tokens=False)
    return {"tmp": tmp, "metrics": metrics, "rows": rows, "tool_ids": tool_ids}


def _on_policy(rows: dict) -> list[int]:
    return [i for i, off in enumerate(rows["off_policy"]) if not off]


def _replayed(rows: dict) -> list[int]:
    return [i for i, off in enumerate(rows["off_policy"]) if off]


def _tool_span(ids: list[int], tool_ids: list[int]) -> range:
    """Where the tool message sits: after the first assistant turn (at most 4 tokens)."""
    for start in range(0, 5):
        if ids[start : start + len(tool_ids)] == tool_ids:
            return range(start, start + len(tool_ids))
    raise AssertionError(f"no tool message in the first 4 + {len(tool_ids)} tokens of {ids}")


def test_on_policy_rows_carry_masked_tool_tokens(tool_run):
    """The stand-in agent loop works as meant: the mask is 0 exactly on the tool message's tokens."""
    tool_ids = tool_run["tool_ids"]
    for step, rows in tool_run["rows"].items():
        assert len(_on_policy(rows)) == 8, step
        for i in _on_policy(rows):
            ids, mask = rows["responses"][i].tolist(), rows["response_mask"][i].tolist()
            span = _tool_span(ids, tool_ids)
            assert [k for k, m in enumerate(mask) if m == 0] == list(span), (step, ids, mask)
            assert rows["loss_mask"][i].tolist() == mask


def test_masked_responses_are_stored(tool_run):
    m = tool_run["metrics"]
    for step in range(1, STEPS + 1):
        # every on-policy row has tool tokens; none of them is turned away
        assert not any(k.startswith("repo/bad_rows_") and v for k, v in m[step].items() if "truncated" not in k), m[step]
    assert m[1]["repo/store_num_masked_entries"] == 8 and m[1]["repo/store_num_entries"] == 8
    # 3 steps x 8 rows into 4 prompts of capacity 4: 16 entries, all with their masks
    assert m[STEPS]["repo/store_num_entries"] == 16 and m[STEPS]["repo/store_num_masked_entries"] == 16
    for step in (2, 3):
        assert m[step]["repo/replayed_rows"] == 8 and m[step]["repo/prompts_with_replay"] == 4


def test_replayed_rows_carry_exactly_their_stored_mask(tool_run):
    rows_by_step = tool_run["rows"]
    for step in (2, 3):
        # what could have been stored: the on-policy rows of the earlier steps, by prompt and response ids
        earlier = {}
        for s in range(1, step):
            r = rows_by_step[s]
            for i in _on_policy(r):
                earlier[(r["prompt_key"][i], tuple(r["responses"][i].tolist()))] = (r, i)
        rows = rows_by_step[step]
        assert len(_replayed(rows)) == 8
        for i in _replayed(rows):
            source, j = earlier[(rows["prompt_key"][i], tuple(rows["responses"][i].tolist()))]
            mask = source["response_mask"][j]
            assert (mask == 0).any()  # a multi-turn response, not a plain one
            assert torch.equal(rows["response_mask"][i], mask) and torch.equal(rows["loss_mask"][i], mask)
            # positions as for the on-policy row (same prompt, same response): tool tokens included
            assert torch.equal(rows["position_ids"][i], source["position_ids"][j])
            # behaviour log-probs: the old log-probs the source row was trained with, bit for bit
            assert rows["old_log_probs"][i].numpy().tobytes() == source["old_log_probs"][j].numpy().tobytes()


def test_loss_tokens_exclude_the_tool_tokens(tool_run):
    """The actor's loss takes its tokens from response_mask; on tool tokens the advantage is 0 too."""
    tool_ids = tool_run["tool_ids"]
    for step in (2, 3):
        rows = tool_run["rows"][step]
        for i in range(len(rows["off_policy"])):
            ids, mask, adv = rows["responses"][i].tolist(), rows["response_mask"][i], rows["advantages"][i]
            span = _tool_span(ids, tool_ids)
            loss_tokens = [k for k, m in enumerate(mask.tolist()) if m]
            assert not set(loss_tokens) & set(span) and len(loss_tokens) == len(ids) - len(span)
            assert adv[mask == 0].abs().max() == 0
            assert torch.unique(adv[mask == 1]).numel() == 1  # one advantage per row, on every loss token


def test_the_checkpointed_store_keeps_the_masks(tool_run):
    store = ReplayStore(max_cache_size=4, min_cache_to_replay=2)
    load_store_state(store, Path(tool_run["tmp"]) / "out" / "checkpoints" / f"global_step_{STEPS}", expected_step=STEPS)
    # the last two steps' on-policy rows, with the masks they were trained with
    expected = {}
    for step in (STEPS - 1, STEPS):
        rows = tool_run["rows"][step]
        for i in _on_policy(rows):
            expected.setdefault(rows["prompt_key"][i], []).append(
                (tuple(rows["responses"][i].tolist()), tuple(bool(m) for m in rows["response_mask"][i].tolist()))
            )
    assert store.num_entries == 16 and store.num_masked_entries == 16
    for key, entries in expected.items():
        got = [(tuple(e.response_ids.tolist()), tuple(e.loss_mask.tolist())) for e in store.entries(key)]
        assert sorted(got) == sorted(entries), key
