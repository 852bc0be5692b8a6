"""A stand-in tool-calling agent loop for the tests: two assistant turns around a fake tool message.

verl's agent loops mark tool output in a response with ``response_mask`` 0 (verl/experimental/
agent_loop/tool_agent_loop.py); this loop does the same without a tool parser or a sandbox, so
the tiny model (which never emits a well-formed tool call) still produces multi-turn rows:

    response = [assistant turn 1 (mask 1)] [TOOL_MESSAGE tokens (mask 0)] [assistant turn 2 (mask 1)]

Turn 2 is generated from the prompt, turn 1 and the tool message, as in a real agent loop. Not
registered with ``@register``: a test registers it for its own run only, through verl's
``actor_rollout_ref.rollout.agent.agent_loop_config_path`` (a yaml list of ``{name, _target_}``)
and selects it with ``actor_rollout_ref.rollout.agent.default_agent_loop`` (see
:func:`agent_loop_overrides`). The Ray workers import it by module name, so its folder must be on
their ``PYTHONPATH``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput

AGENT_NAME = "repo_test_tool_mask_agent"
#: a ChatML tool message: tokens the policy did not generate
TOOL_MESSAGE = "<|im_start|>tool\n42<|im_end|>\n"
#: tokens of the first assistant turn at most
FIRST_TURN_TOKENS = 4


class ToolMaskAgentLoop(AgentLoopBase):
    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        prompt_ids = await self.ct_build_initial_tokens(list(kwargs["raw_prompt"]))
        tool_ids = self.tokenizer.encode(TOOL_MESSAGE, add_special_tokens=False)
        budget = int(self.rollout_config.response_length)
        first = await self.server_manager.generate(
            request_id=uuid4().hex, prompt_ids=prompt_ids,
            sampling_params={**sampling_params, "max_tokens": FIRST_TURN_TOKENS},
        )
        context = [*prompt_ids, *first.token_ids, *tool_ids]
        second = await self.server_manager.generate(
            request_id=uuid4().hex, prompt_ids=context,
            sampling_params={**sampling_params, "max_tokens": budget - len(first.token_ids) - len(tool_ids)},
        )
        response_ids = [*first.token_ids, *tool_ids, *second.token_ids]
        response_mask = [1] * len(first.token_ids) + [0] * len(tool_ids) + [1] * len(second.token_ids)
        log_probs = None
        if first.log_probs is not None and second.log_probs is not None:
            log_probs = [*first.log_probs, *([0.0] * len(tool_ids)), *second.log_probs]
        return AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=response_ids,
            response_mask=response_mask,
            response_logprobs=log_probs,
            num_turns=4,  # user, assistant, tool, assistant
            metrics={"num_preempted": -1},
            extra_fields={**second.extra_fields, "turn_scores": [], "tool_rewards": []},
        )


def agent_loop_overrides(config_dir: str | Path) -> list[str]:
    """Overrides that register this loop (a yaml written into ``config_dir``) and select it for every
    row. The Ray workers' PYTHONPATH gets this folder and the checkout whose ``repo_ext`` the test
    imported (so a worktree's code runs in the workers, not the editable install's)."""
    import repo_ext

    path = Path(config_dir) / "tool_mask_agent_loops.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"- name: {AGENT_NAME}\n  _target_: {__name__}.ToolMaskAgentLoop\n")
    python_path = os.pathsep.join([str(Path(__file__).parent), str(Path(repo_ext.__file__).parents[1])])
    return [
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={path}",
        f"actor_rollout_ref.rollout.agent.default_agent_loop={AGENT_NAME}",
        f"+ray_kwargs.ray_init.runtime_env.env_vars.PYTHONPATH='{python_path}'",
    ]
