"""The benchmark's figure: reward and effective non-zero-advantage fraction per arm, against the
training step and against cumulative training time; held-out accuracy curves when evaluated."""

from __future__ import annotations

from pathlib import Path

from benchlib.estimates import step_bands
from benchlib.settings import GRPO_ARMS

def plot(results: dict, path: Path) -> None:
    """Reward and effective non-zero-advantage fraction, all arms on one figure, against step and
    against cumulative training time. With per-prompt-step data: the line is a centred 5-step
    window's mean and the band its bootstrap 95% interval (:func:`step_bands`); the dots are the
    per-step values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    arms = results["arms"]
    curves = (results.get("estimates") or {}).get("curves") or {}
    fig, axes = plt.subplots(3 if curves else 2, 2, figsize=(13, 12.5 if curves else 8.5))
    for index, (name, arm) in enumerate(arms.items()):
        color = f"C{index}"
        rows = arm["steps"]
        steps = [r["step"] for r in rows]
        wall_of = {r["step"]: r["cumulative_train_s"] for r in rows}
        reward = [r["reward_mean"] for r in rows]
        # GRPO's "effective" groups are its on-policy groups; RePO's are on-policy or replayed
        nz = [r["nonzero_adv_frac_on"] if name in GRPO_ARMS else r["nonzero_adv_frac_all"] for r in rows]
        width = 2.5 if name in GRPO_ARMS else 1.5
        bands = step_bands(name, arm["prompt_steps"]) if arm.get("prompt_steps") else None
        for col, values, key in ((0, reward, "reward"), (1, nz, "nz")):
            for row_axes, x in ((axes[0, col], steps), (axes[1, col], [wall_of[t] for t in steps])):
                if bands is None:
                    row_axes.plot(x, values, marker="o", color=color, label=name, linewidth=width)
                    continue
                bx = bands["step"] if row_axes is axes[0, col] else [wall_of.get(t) for t in bands["step"]]
                row_axes.scatter(x, values, color=color, s=10, alpha=0.5)
                row_axes.plot(bx, bands[key], color=color, label=f"{name} (5-step window)", linewidth=width)
                row_axes.fill_between(bx, bands[f"{key}_low"], bands[f"{key}_high"], color=color, alpha=0.2)
    for index, (name, arm) in enumerate(arms.items()):
        curve = curves.get(name)
        if not curve:
            continue
        wall_of = {0: 0.0, **{r["step"]: r["cumulative_train_s"] for r in arm["steps"]}}
        axes[2, 0].plot(curve["steps"], curve["accuracy"], marker="o", color=f"C{index}", label=f"{name} (AUC {curve['auc']:.3f})")
        axes[2, 1].plot([wall_of.get(t) for t in curve["steps"]], curve["accuracy"], marker="o", color=f"C{index}", label=name)
    if curves:
        for ax in axes[2]:
            ax.set_ylabel("held-out accuracy")
        axes[2, 0].set_xlabel("training step")
        axes[2, 1].set_xlabel("cumulative training time, s")
    for ax in axes[0]:
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[1]:
        ax.set_xlabel("cumulative training time, s (start-up and checkpoint save excluded)")
    for ax in axes[:2, 0]:
        ax.set_ylabel("mean reward (on-policy samples)")
    for ax in axes[:2, 1]:
        ax.set_ylabel("prompts with non-zero advantage\n(GRPO: on-policy; RePO: on or replayed)")
    for ax in axes.flat:
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    s = results["settings"]
    fig.suptitle(
        f"RePO vs GRPO, {s['model']}, {s['prompts_per_step']} prompts x {s['samples']} samples/step, CPU "
        f"({results['machine']['cpus']} cores); bands: bootstrap 95% over the window's prompt-steps"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
