"""HFBatchGenerator against references computed here by plain forward passes.

Log-prob tolerance: 1e-4 (fp32; observed differences ~1e-6, from batched/padded vs unpadded matmuls).
"""

import math

import pytest
import torch

from repo_ext.cpu.hf_generation import (
    GenerationRequest,
    HFBatchGenerator,
    SamplingSettings,
    parse_sampling_params,
)

LOGPROB_TOL = 1e-4
PROMPTS = [[1, 87, 85, 262, 201], [1, 67, 85, 85, 260, 86, 263, 86, 201, 5, 9], [1, 40]]


def _next_token_logits(model, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0, -1].double()


def _processed_log_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Brute force: the sampling distribution after temperature, then top-k, then top-p."""
    scores = logits / temperature
    keep = torch.ones_like(scores, dtype=torch.bool)
    if top_k > 0:
        kth = torch.sort(scores, descending=True).values[top_k - 1]
        keep &= scores >= kth
    probs = torch.softmax(torch.where(keep, scores, torch.tensor(-math.inf, dtype=scores.dtype)), dim=-1)
    if top_p < 1:
        for i in range(len(scores)):
            mass_above = probs[probs > probs[i]].sum()
            if mass_above >= top_p:
                keep[i] = False
    kept = torch.where(keep, scores, torch.tensor(-math.inf, dtype=scores.dtype))
    return kept - torch.logsumexp(kept, dim=-1)


def _greedy_by_hand(model, prompt: list[int], n: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(int(torch.argmax(_next_token_logits(model, tokens))))
    return tokens[len(prompt) :]


@pytest.fixture
def generator(tiny_model, tiny_tokenizer):
    return HFBatchGenerator(tiny_model, eos_token_ids=[tiny_tokenizer.eos_token_id], pad_token_id=tiny_tokenizer.pad_token_id)


def test_log_probs_equal_actor_definition_without_top_k_top_p(tiny_model, generator):
    # what verl's actor recomputes: log_softmax(logits / T) at the sampled token
    torch.manual_seed(0)
    temperature = 0.7
    requests = [
        GenerationRequest(prompt_ids=p, max_tokens=12, sampling=SamplingSettings(temperature=temperature), logprobs=True)
        for p in PROMPTS
    ]
    results = generator.generate(requests)
    for request, result in zip(requests, results):
        assert len(result.log_probs) == len(result.token_ids) >= 1
        for pos, token in enumerate(result.token_ids):
            logits = _next_token_logits(tiny_model, request.prompt_ids + result.token_ids[:pos])
            expected = torch.log_softmax(logits / temperature, dim=-1)[token].item()
            assert result.log_probs[pos] == pytest.approx(expected, abs=LOGPROB_TOL)


def test_log_probs_are_of_the_top_k_top_p_sampling_distribution(tiny_model, generator):
    torch.manual_seed(1)
    settings = SamplingSettings(temperature=0.8, top_k=5, top_p=0.9)
    requests = [GenerationRequest(prompt_ids=p, max_tokens=10, sampling=settings, logprobs=True) for p in PROMPTS]
    for request, result in zip(requests, generator.generate(requests)):
        for pos, token in enumerate(result.token_ids):
            logits = _next_token_logits(tiny_model, request.prompt_ids + result.token_ids[:pos])
            expected = _processed_log_probs(logits, 0.8, 5, 0.9)
            assert math.isfinite(expected[token].item()), "sampled a token outside the top-k/top-p set"
            assert result.log_probs[pos] == pytest.approx(expected[token].item(), abs=LOGPROB_TOL)


def test_raw_logprobs_mode_ignores_temperature(tiny_model, tiny_tokenizer):
    generator = HFBatchGenerator(tiny_model, [tiny_tokenizer.eos_token_id], tiny_tokenizer.pad_token_id, "raw_logprobs")
    torch.manual_seed(2)
    request = GenerationRequest(prompt_ids=PROMPTS[0], max_tokens=6, sampling=SamplingSettings(temperature=0.5), logprobs=True)
    [result] = generator.generate([request])
    for pos, token in enumerate(result.token_ids):
        logits = _next_token_logits(tiny_model, request.prompt_ids + result.token_ids[:pos])
        assert result.log_probs[pos] == pytest.approx(torch.log_softmax(logits, -1)[token].item(), abs=LOGPROB_TOL)


def test_greedy_batch_with_padding_equals_argmax_by_hand(tiny_model, generator):
    requests = [GenerationRequest(prompt_ids=p, max_tokens=8, sampling=SamplingSettings(temperature=0)) for p in PROMPTS]
    results = generator.generate(requests)
    for request, result in zip(requests, results):
        expected = _greedy_by_hand(tiny_model, request.prompt_ids, 8)
        eos = generator.eos_token_ids[0]
        if eos in expected:
            expected = expected[: expected.index(eos) + 1]
        assert result.token_ids == expected
        assert result.log_probs is None  # not asked for


def test_generation_stops_at_eos_and_includes_it(tiny_model, tiny_tokenizer):
    prompt = PROMPTS[1]
    greedy = _greedy_by_hand(tiny_model, prompt, 10)
    eos = greedy[3]
    first = greedy.index(eos)  # the token may already occur earlier
    generator = HFBatchGenerator(tiny_model, eos_token_ids=[eos], pad_token_id=tiny_tokenizer.pad_token_id)
    [result] = generator.generate(
        [GenerationRequest(prompt_ids=prompt, max_tokens=10, sampling=SamplingSettings(temperature=0), logprobs=True)]
    )
    assert result.token_ids == greedy[: first + 1]
    assert result.finish_reason == "stop"
    assert len(result.log_probs) == first + 1

    [ignored] = generator.generate(
        [GenerationRequest(prompt_ids=prompt, max_tokens=10, sampling=SamplingSettings(temperature=0, ignore_eos=True))]
    )
    assert ignored.token_ids == greedy and ignored.finish_reason == "length"


def test_each_request_keeps_its_own_max_tokens_and_settings(tiny_model, generator):
    torch.manual_seed(3)
    requests = [
        GenerationRequest(prompt_ids=PROMPTS[0], max_tokens=3, sampling=SamplingSettings(temperature=0)),
        GenerationRequest(prompt_ids=PROMPTS[1], max_tokens=9, sampling=SamplingSettings(temperature=0)),
        GenerationRequest(prompt_ids=PROMPTS[2], max_tokens=5, sampling=SamplingSettings(temperature=1.0, top_k=3)),
    ]
    results = generator.generate(requests)
    for request, result in zip(requests, results):
        assert 1 <= len(result.token_ids) <= request.max_tokens
        if result.finish_reason == "length":
            assert len(result.token_ids) == request.max_tokens
    eos = generator.eos_token_ids[0]
    for request, result in zip(requests[:2], results[:2]):
        expected = _greedy_by_hand(tiny_model, request.prompt_ids, request.max_tokens)
        assert result.token_ids == (expected[: expected.index(eos) + 1] if eos in expected else expected)


def test_load_weights_replaces_the_model(tiny_model_path, tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from repo_ext.assets.tiny_model import build_tiny_model

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    other = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "seed1", seed=1)).eval()
    generator = HFBatchGenerator(model, [tiny_tokenizer.eos_token_id], tiny_tokenizer.pad_token_id)
    copied = generator.load_weights(other.state_dict().items())
    assert copied == len(other.state_dict())
    for name, tensor in other.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    with pytest.raises(KeyError, match="not in the rollout model"):
        generator.load_weights([("no.such.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match="shape"):
        generator.load_weights([("model.norm.weight", torch.zeros(3))])


def test_released_weights_come_back_with_a_full_sync_and_generation_refuses_until_then(
    tiny_model_path, tmp_path, tiny_tokenizer
):
    from transformers import AutoModelForCausalLM

    from repo_ext.assets.tiny_model import build_tiny_model

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    other = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "seed1", seed=1)).eval()
    generator = HFBatchGenerator(model, [tiny_tokenizer.eos_token_id], tiny_tokenizer.pad_token_id)
    request = GenerationRequest(prompt_ids=PROMPTS[1], max_tokens=6, sampling=SamplingSettings(temperature=0), logprobs=True)

    unique = {id(p): p for p in model.parameters()}.values()  # the tied lm_head counted once
    size = sum(p.numel() * p.element_size() for p in unique)
    assert generator.release_weights() == size
    assert all(p.numel() == 0 for p in model.parameters())
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    assert generator.release_weights() == 0  # twice: nothing more to free
    with pytest.raises(RuntimeError, match="have no weights"):
        generator.generate([request])

    state = other.state_dict()
    half = [(k, v) for k, v in state.items() if k.startswith("model.layers.0.")]
    generator.load_weights(half)
    assert 0 < generator.weights_missing < len(list(unique))
    with pytest.raises(RuntimeError, match="have no weights"):
        generator.generate([request])

    generator.load_weights(state.items())
    assert generator.weights_missing == 0
    for name, tensor in state.items():
        assert torch.equal(model.state_dict()[name], tensor), name
    [result] = generator.generate([request])
    expected = _greedy_by_hand(other, PROMPTS[1], 6)
    eos = tiny_tokenizer.eos_token_id
    assert result.token_ids == (expected[: expected.index(eos) + 1] if eos in expected else expected)


def test_sampling_params_parsing_and_validation():
    settings, max_tokens, logprobs = parse_sampling_params(
        {"temperature": 0.5, "top_k": -1, "top_p": 0.9, "repetition_penalty": 1.0, "logprobs": True},
        default_max_tokens=7,
    )
    assert (settings.temperature, settings.top_k, settings.top_p, max_tokens, logprobs) == (0.5, -1, 0.9, 7, True)
    assert parse_sampling_params({"max_tokens": 3}, default_max_tokens=7)[1] == 3
    assert parse_sampling_params({"max_new_tokens": 4}, default_max_tokens=7)[1] == 4
    with pytest.raises(ValueError, match="unsupported sampling parameter"):
        parse_sampling_params({"stop": ["x"]}, default_max_tokens=7)
    with pytest.raises(ValueError, match="top_p"):
        SamplingSettings(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingSettings(temperature=-1)
    with pytest.raises(ValueError, match="max_tokens"):
        GenerationRequest(prompt_ids=[1], max_tokens=0)


def test_sample_rows_takes_the_token_where_the_rows_uniform_falls_by_hand():
    from repo_ext.cpu.hf_generation import sample_rows

    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    scores = probs.log()  # log 0 = -inf: an excluded token
    seeds = [11, 12]
    chosen = sample_rows(scores, [torch.Generator().manual_seed(s) for s in seeds])
    for row, seed in enumerate(seeds):
        u = torch.rand((), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).item()
        cumulative, expected = 0.0, None
        for token, p in enumerate(probs[row].tolist()):
            cumulative += p
            if u < cumulative:
                expected = token
                break
        assert int(chosen[row]) == expected, (row, u)
    # a token of probability 0 is never drawn, whatever the uniform
    many = sample_rows(scores[:1].expand(2000, 4), [torch.Generator().manual_seed(s) for s in range(2000)])
    assert 1 not in many.tolist()
    counts = torch.bincount(many, minlength=4).double() / 2000
    # binomial standard error at p=0.6, n=2000 is 0.011; 5 of them
    assert torch.allclose(counts, probs[0], atol=0.055), counts
    with pytest.raises(ValueError, match="one generator per row"):
        sample_rows(scores, [torch.Generator()])


def test_seeded_request_samples_the_same_tokens_alone_or_in_any_batch(generator):
    settings = SamplingSettings(temperature=1.0)
    target = GenerationRequest(prompt_ids=PROMPTS[1], max_tokens=12, sampling=settings, logprobs=True, seed=1234)
    torch.manual_seed(0)
    [alone] = generator.generate([target])
    others = [
        GenerationRequest(prompt_ids=PROMPTS[0], max_tokens=5, sampling=settings, seed=1),
        GenerationRequest(prompt_ids=PROMPTS[2], max_tokens=12, sampling=settings),  # unseeded neighbour
    ]
    torch.manual_seed(99)  # the global RNG must not matter for a seeded request
    batched = generator.generate([others[0], target, others[1]])[1]
    assert batched.token_ids == alone.token_ids
    assert batched.log_probs == pytest.approx(alone.log_probs, abs=LOGPROB_TOL)
    # the seed does matter: another seed gives another response (tiny random model: near-uniform
    # over 300+ tokens, so 12 equal draws by chance are out of the question)
    [reseeded] = generator.generate([GenerationRequest(prompt_ids=PROMPTS[1], max_tokens=12, sampling=settings, seed=4321)])
    assert reseeded.token_ids != alone.token_ids
