"""The RePO policy loss: PPO's clipped surrogate on on-policy and replayed (off-policy) rows.

Per token, every row gets the same surrogate as verl's ``compute_policy_loss_vanilla``
(verl/trainer/ppo/core_algos.py)::

    ratio = exp(clamp(log_prob - old_log_prob, -20, 20))
    l     = max(-A * ratio, -A * clip(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high))
    l     = min(l, -A * clip_ratio_c)         if A < 0   (dual clip)

For off-policy rows ``old_log_prob`` holds the behaviour log-probs stored with the replayed
response (the trainer puts them there), so their ratio is pi_theta / pi_behaviour, as in RePO.
Only ``log_prob`` carries gradient.

Two weightings of the off-policy rows (``weighting``), both from the paper's sources:

- ``reference`` (the reference code): off-policy token losses are multiplied by
  ``off_policy_loss_coef`` and then ONE aggregation runs over all rows, normalised as verl would
  (``global_batch_size`` / ``batch_num_tokens`` / ``dp_size``). With G_on = G_off and
  seq-mean-token-mean this is 1/2 J_on + 1/2 coef J_off.
- ``paper`` (the paper's objective): ``agg(on rows) + coef * agg(off rows)``, each side normalised by
  its own row / token count (``num_on_rows`` / ``num_on_tokens`` and ``num_off_rows`` /
  ``num_off_tokens``: global counts of the mini-batch when data parallel; the local counts by
  default when ``dp_size == 1``). A side with no valid token on this rank contributes 0.

Aggregation modes mirror verl's ``agg_loss``: token-mean, token-sum, seq-mean-token-mean,
seq-mean-token-sum, seq-mean-token-sum-norm, with the same ``dp_size`` scaling (each rank's loss is
multiplied by ``dp_size`` because data-parallel gradients are averaged).
"""

from __future__ import annotations

import torch

LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
LOSS_WEIGHTINGS = ("reference", "paper")


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is true; NaN/inf outside the mask does not leak in."""
    valid = torch.where(mask.bool(), values, 0.0)
    return (valid * mask).sum() if dim is None else (valid * mask).sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is true (0 when the mask is empty), as verl's masked_mean."""
    return masked_sum(values, mask) / (mask.sum() + 1e-8)


def aggregate_token_losses(
    loss_mat: torch.Tensor,
    loss_mask: torch.Tensor,
    loss_agg_mode: str,
    *,
    dp_size: int = 1,
    batch_num_tokens: int | torch.Tensor | None = None,
    global_batch_size: int | torch.Tensor | None = None,
    loss_scale_factor: int | float | None = None,
) -> torch.Tensor:
    """Token losses -> scalar, with the semantics of verl's ``agg_loss``.

    Args:
        loss_mat: (B, T) per-token losses of this micro-batch.
        loss_mask: (B, T) bool (or 0/1) valid-token mask.
        loss_agg_mode: one of :data:`LOSS_AGG_MODES`.
        dp_size: data-parallel size; the local result is multiplied by it.
        batch_num_tokens: valid tokens of the global mini-batch (token-mean); default: local count,
            required when dp_size > 1.
        global_batch_size: rows of the global mini-batch (seq-mean-*); default: local rows with at
            least one valid token, required when dp_size > 1.
        loss_scale_factor: divisor of seq-mean-token-sum-norm; default T.

    Returns:
        scalar tensor.
    """
    if loss_agg_mode == "token-mean":
        if batch_num_tokens is None:
            if dp_size > 1:
                raise ValueError("batch_num_tokens (valid tokens of the global batch) is required when dp_size > 1")
            batch_num_tokens = loss_mask.sum()
        return masked_sum(loss_mat, loss_mask) / batch_num_tokens * dp_size
    if loss_agg_mode == "token-sum":
        return masked_sum(loss_mat, loss_mask) * dp_size
    if loss_agg_mode == "seq-mean-token-mean":
        token_counts = torch.sum(loss_mask, dim=-1)
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1) / (token_counts + 1e-8)
    elif loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm"):
        token_counts = torch.sum(loss_mask, dim=-1)
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
    else:
        raise ValueError(f"loss_agg_mode {loss_agg_mode!r} is invalid; valid modes are: {', '.join(LOSS_AGG_MODES)}")
    seq_mask = (token_counts > 0).float()  # fully masked rows do not count
    if global_batch_size is None:
        if dp_size > 1:
            raise ValueError("global_batch_size (rows of the global batch) is required when dp_size > 1")
        global_batch_size = seq_mask.sum()
    loss = masked_sum(seq_losses, seq_mask) / global_batch_size * dp_size
    if loss_agg_mode == "seq-mean-token-sum-norm":
        loss = loss / (loss_mask.shape[-1] if loss_scale_factor is None else loss_scale_factor)
    return loss


def clipped_surrogate(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float,
) -> dict[str, torch.Tensor]:
    """Per-token dual-clip PPO surrogate, as verl's compute_policy_loss_vanilla before aggregation.

    Args:
        log_prob: (B, T) current policy log-probs (carries gradient).
        old_log_prob: (B, T) old policy (on-policy rows) or stored behaviour (off-policy rows)
            log-probs; detached here.
        advantages: (B, T) token advantages; detached here.

    Returns:
        dict of (B, T) tensors: ``loss`` (per-token loss), ``ratio``, ``log_ratio`` (clamped
        log_prob - old_log_prob), ``clipped`` (the clip term was active: verl's pg_clipfrac
        indicator), ``clipped_lower`` (the dual clip was active: verl's pg_clipfrac_lower indicator).
    """
    old_log_prob = old_log_prob.detach()
    advantages = advantages.detach()
    log_ratio = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
    ppo_loss = torch.maximum(unclipped, clipped)
    dual_clip = -advantages * clip_ratio_c
    dual_loss = torch.min(dual_clip, ppo_loss)
    return {
        "loss": torch.where(advantages < 0, dual_loss, ppo_loss),
        "ratio": ratio,
        "log_ratio": log_ratio,
        "clipped": torch.gt(clipped, unclipped),
        "clipped_lower": torch.gt(ppo_loss, dual_clip) & (advantages < 0),
    }


def repo_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    off_policy: torch.Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    weighting: str = "reference",
    off_policy_loss_coef: float = 1.0,
    loss_agg_mode: str = "seq-mean-token-mean",
    dp_size: int = 1,
    global_batch_size: int | torch.Tensor | None = None,
    batch_num_tokens: int | torch.Tensor | None = None,
    num_on_rows: int | torch.Tensor | None = None,
    num_off_rows: int | torch.Tensor | None = None,
    num_on_tokens: int | torch.Tensor | None = None,
    num_off_tokens: int | torch.Tensor | None = None,
    loss_scale_factor: int | float | None = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """RePO policy loss of one micro-batch of on- and off-policy rows.

    Args:
        log_prob: (B, T) current policy log-probs; the only input that carries gradient.
        old_log_prob: (B, T) old log-probs; for off-policy rows the stored behaviour log-probs.
        advantages: (B, T) token advantages (e.g. :func:`~repo_ext.algorithm.advantages.broadcast_to_tokens`).
        response_mask: (B, T) bool (or 0/1) valid-token mask.
        off_policy: (B,) bool, True for rows replayed from the store.
        clip_ratio_low, clip_ratio_high: PPO clip range ``[1 - low, 1 + high]``.
        clip_ratio_c: dual-clip bound for negative advantages, > 1.
        weighting: ``"reference"`` or ``"paper"`` (module docstring).
        off_policy_loss_coef: weight of the off-policy term, >= 0.
        loss_agg_mode: one of :data:`LOSS_AGG_MODES`.
        dp_size, global_batch_size, batch_num_tokens, loss_scale_factor: as verl's ``agg_loss``
            (``reference`` weighting; ``paper`` uses dp_size and loss_scale_factor only).
        num_on_rows, num_on_tokens, num_off_rows, num_off_tokens: the ``paper`` weighting's
            normalisers per side (rows for seq-mean-*, tokens for token-mean), global over the
            mini-batch; default the local counts, required when dp_size > 1.
        rollout_is_weights: optional (B, T) per-token weights multiplied into the token losses, as
            verl's vanilla loss does with rollout-correction weights.

    Returns:
        ``(loss, metrics)``: a scalar tensor and a dict of floats, the same keys for every
        micro-batch: the sums and counts of :data:`SUM_METRICS` (turned into
        ``repo/on_policy_loss``, ``repo/off_policy_loss`` (each side's loss without the
        coefficient, per row for seq-mean-* modes and per token for token-*),
        ``repo/on_clipfrac``, ``repo/off_clipfrac`` (fraction of the side's valid tokens whose clip
        was active), ``repo/off_ratio_mean`` (ratio pi_theta / pi_behaviour over valid off-policy
        tokens), ``repo/nonzero_adv_row_frac`` (rows with a valid token whose advantage is
        non-zero on some valid token) and ``repo/off_row_frac`` by :func:`mean_metrics_from_sums`),
        ``repo/off_ratio_max`` (0.0 without off-policy tokens), and verl's ``actor/pg_clipfrac``,
        ``actor/ppo_kl``, ``actor/pg_clipfrac_lower`` over all valid tokens of the micro-batch.
    """
    _check_inputs(log_prob, old_log_prob, advantages, response_mask, off_policy)
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"weighting {weighting!r} is invalid; valid weightings are: {', '.join(LOSS_WEIGHTINGS)}")
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode {loss_agg_mode!r} is invalid; valid modes are: {', '.join(LOSS_AGG_MODES)}")
    if not off_policy_loss_coef >= 0:
        raise ValueError(f"off_policy_loss_coef must be >= 0, got {off_policy_loss_coef!r}")
    if not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c (dual-clip bound) must be > 1.0, got {clip_ratio_c!r}")

    mask = response_mask.bool()
    off_rows = off_policy.unsqueeze(-1)
    on_mask = mask & ~off_rows
    off_mask = mask & off_rows
    terms = clipped_surrogate(
        log_prob,
        old_log_prob,
        advantages,
        clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high,
        clip_ratio_c=clip_ratio_c,
    )
    token_losses = terms["loss"]
    if rollout_is_weights is not None:
        token_losses = token_losses * rollout_is_weights

    if weighting == "reference":
        loss = aggregate_token_losses(
            torch.where(off_rows, token_losses * off_policy_loss_coef, token_losses),
            mask,
            loss_agg_mode,
            dp_size=dp_size,
            batch_num_tokens=batch_num_tokens,
            global_batch_size=global_batch_size,
            loss_scale_factor=loss_scale_factor,
        )
    else:
        on_term = _side_loss(
            token_losses, on_mask, loss_agg_mode, dp_size, num_on_rows, num_on_tokens, loss_scale_factor, "on"
        )
        off_term = _side_loss(
            token_losses, off_mask, loss_agg_mode, dp_size, num_off_rows, num_off_tokens, loss_scale_factor, "off"
        )
        loss = on_term + off_policy_loss_coef * off_term

    metrics = _metrics(
        terms, token_losses.detach(), mask, on_mask, off_mask, advantages, loss_agg_mode, loss_scale_factor
    )
    return loss, metrics


def _side_loss(
    token_losses: torch.Tensor,
    side_mask: torch.Tensor,
    loss_agg_mode: str,
    dp_size: int,
    num_rows: int | torch.Tensor | None,
    num_tokens: int | torch.Tensor | None,
    loss_scale_factor: int | float | None,
    side: str,
) -> torch.Tensor:
    """One side's term of the ``paper`` weighting, normalised by its own row or token count."""
    if not bool(side_mask.any()):
        return masked_sum(token_losses, side_mask)  # exactly 0, and still part of the graph
    if loss_agg_mode == "token-sum":
        return aggregate_token_losses(token_losses, side_mask, loss_agg_mode, dp_size=dp_size)
    unit = "tokens" if loss_agg_mode == "token-mean" else "rows"
    normaliser = num_tokens if unit == "tokens" else num_rows
    if normaliser is None and dp_size > 1:
        raise ValueError(
            f"num_{side}_{unit} (the {side}-policy {unit} of the whole mini-batch) is required when dp_size > 1"
        )
    if normaliser is not None and float(normaliser) <= 0:
        raise ValueError(
            f"num_{side}_{unit}={float(normaliser)} but this micro-batch has valid {side}-policy {unit}; "
            f"pass the {side}-policy {unit} of the whole mini-batch (> 0)"
        )
    return aggregate_token_losses(
        token_losses,
        side_mask,
        loss_agg_mode,
        dp_size=dp_size,
        batch_num_tokens=normaliser if unit == "tokens" else None,
        global_batch_size=normaliser if unit == "rows" else None,
        loss_scale_factor=loss_scale_factor,
    )


#: Per-side metrics as (numerator, denominator) pairs. :func:`repo_policy_loss` reports, for every
#: micro-batch, the numerator (a sum) and the denominator (a count) of each, always all of them, 0 on
#: a side the micro-batch does not hold. verl gathers loss metrics per micro-batch and data-parallel
#: rank and requires every rank to report every key equally often
#: (verl/utils/metric/utils.py ``Metric.aggregate_dp``); the RePO loss wrapper tags these as
#: ``AggregationType.SUM`` and the trainer divides once (:func:`mean_metrics_from_sums`), so the
#: value logged is the mean over all of the side's tokens (rows) of the step, however they were
#: spread over ranks and micro-batches.
SUM_METRICS: dict[str, tuple[str, str]] = {
    "repo/on_policy_loss": ("repo/sum/on_policy_loss", "repo/sum/on_loss_units"),
    "repo/off_policy_loss": ("repo/sum/off_policy_loss", "repo/sum/off_loss_units"),
    "repo/on_clipfrac": ("repo/sum/on_clipped_tokens", "repo/sum/on_tokens"),
    "repo/off_clipfrac": ("repo/sum/off_clipped_tokens", "repo/sum/off_tokens"),
    "repo/off_ratio_mean": ("repo/sum/off_ratio", "repo/sum/off_tokens"),
    "repo/nonzero_adv_row_frac": ("repo/sum/nonzero_adv_rows", "repo/sum/valid_rows"),
    "repo/off_row_frac": ("repo/sum/off_rows", "repo/sum/valid_rows"),
}
#: Means formed like :data:`SUM_METRICS` from sums that only some settings report (every micro-batch
#: of a step reports them, or none does): the entropy of the rows that went through an update that
#: skipped zero-advantage rows, per valid token (``integration.zero_adv_skip.report_updated_rows_entropy``).
OPTIONAL_SUM_METRICS: dict[str, tuple[str, str]] = {
    "repo/entropy_updated_rows": ("repo/sum/updated_entropy", "repo/sum/updated_entropy_tokens"),
}
#: the sums and counts above, each reported once per micro-batch
SUM_KEYS: tuple[str, ...] = tuple(dict.fromkeys(k for pair in SUM_METRICS.values() for k in pair))
#: reported by every micro-batch (0.0 without replayed tokens: ratios are > 0); aggregated with MAX
MAX_METRICS: tuple[str, ...] = ("repo/off_ratio_max",)
#: the metric each max belongs to: dropped with it when the step has no token of that side
_MAX_SIDE = {"repo/off_ratio_max": "repo/sum/off_tokens"}


def mean_metrics_from_sums(metrics: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Replace the sums and counts of :data:`SUM_METRICS` (and of :data:`OPTIONAL_SUM_METRICS`,
    where present) in ``metrics`` by their means, in place.

    Args:
        metrics: logged metrics holding ``prefix + key`` for every key of :data:`SUM_KEYS`, each
            any constant multiple of the sum over the step (verl logs the sum over micro-batches
            averaged over ranks and mini-batches: the same factor for numerator and denominator).
        prefix: what the trainer put in front of the loss's keys (verl's actor update: ``"actor/"``).

    Returns:
        ``metrics``. A mean whose denominator is 0 (no token of that side in the step) is not
        reported, nor is its max: the mean of nothing is not 0. Without the sums (e.g. the actor
        update did not run) ``metrics`` is left alone.
    """
    for name, (numerator, denominator) in OPTIONAL_SUM_METRICS.items():
        if prefix + numerator in metrics and prefix + denominator in metrics:
            total, count = float(metrics.pop(prefix + numerator)), float(metrics.pop(prefix + denominator))
            if count > 0:
                metrics[prefix + name] = total / count
    if prefix + SUM_KEYS[0] not in metrics:
        return metrics
    sums = {key: float(metrics.pop(prefix + key)) for key in SUM_KEYS}
    for name, (numerator, denominator) in SUM_METRICS.items():
        if sums[denominator] > 0:
            metrics[prefix + name] = sums[numerator] / sums[denominator]
    for name, denominator in _MAX_SIDE.items():
        if sums[denominator] <= 0:
            metrics.pop(prefix + name, None)
    return metrics


@torch.no_grad()
def _metrics(
    terms: dict[str, torch.Tensor],
    token_losses: torch.Tensor,
    mask: torch.Tensor,
    on_mask: torch.Tensor,
    off_mask: torch.Tensor,
    advantages: torch.Tensor,
    loss_agg_mode: str,
    loss_scale_factor: int | float | None,
) -> dict[str, float]:
    clipped = terms["clipped"].float()

    def side_loss(side_mask: torch.Tensor) -> tuple[float, float]:
        """(sum, units) of the side's loss: per row for seq-mean-*, per token for token-*."""
        if loss_agg_mode.startswith("token"):
            return masked_sum(token_losses, side_mask).item(), float(side_mask.sum())
        rows = side_mask.any(dim=-1)
        token_counts = side_mask.sum(dim=-1)
        row_sums = masked_sum(token_losses, side_mask, dim=-1)
        if loss_agg_mode == "seq-mean-token-mean":
            row_losses = row_sums / token_counts.clamp(min=1)
        elif loss_agg_mode == "seq-mean-token-sum-norm":
            row_losses = row_sums / (side_mask.shape[-1] if loss_scale_factor is None else loss_scale_factor)
        else:
            row_losses = row_sums
        return masked_sum(row_losses, rows).item(), float(rows.sum())

    off_ratios = terms["ratio"].detach()[off_mask]
    on_loss, on_units = side_loss(on_mask)
    off_loss, off_units = side_loss(off_mask)
    sums = {
        "repo/sum/on_policy_loss": on_loss,
        "repo/sum/on_loss_units": on_units,
        "repo/sum/off_policy_loss": off_loss,
        "repo/sum/off_loss_units": off_units,
        "repo/sum/on_clipped_tokens": masked_sum(clipped, on_mask).item(),
        "repo/sum/on_tokens": float(on_mask.sum()),
        "repo/sum/off_clipped_tokens": masked_sum(clipped, off_mask).item(),
        "repo/sum/off_tokens": float(off_mask.sum()),
        "repo/sum/off_ratio": off_ratios.sum().item(),
        "repo/sum/nonzero_adv_rows": float(((advantages.detach() != 0) & mask).any(dim=-1).sum()),
        "repo/sum/valid_rows": float(mask.any(dim=-1).sum()),
        "repo/sum/off_rows": float(off_mask.any(dim=-1).sum()),
    }
    return {
        **sums,
        "repo/off_ratio_max": off_ratios.max().item() if off_ratios.numel() else 0.0,
        "actor/pg_clipfrac": masked_mean(clipped, mask).item(),
        "actor/ppo_kl": masked_mean(-terms["log_ratio"].detach(), mask).item(),
        "actor/pg_clipfrac_lower": masked_mean(terms["clipped_lower"].float(), mask).item(),
    }


def _check_inputs(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    off_policy: torch.Tensor,
) -> None:
    if log_prob.dim() != 2:
        raise ValueError(f"log_prob must be (B, T), got shape {tuple(log_prob.shape)}")
    for name, tensor in (("old_log_prob", old_log_prob), ("advantages", advantages), ("response_mask", response_mask)):
        if tensor.shape != log_prob.shape:
            raise ValueError(f"{name} must have log_prob's shape {tuple(log_prob.shape)}, got {tuple(tensor.shape)}")
    if off_policy.dtype != torch.bool or off_policy.shape != log_prob.shape[:1]:
        raise ValueError(
            f"off_policy must be a bool tensor of shape ({log_prob.shape[0]},), "
            f"got dtype {off_policy.dtype} and shape {tuple(off_policy.shape)}"
        )
