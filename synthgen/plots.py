"""Loss curves, sample grids and the end-of-run summary (matplotlib, no Ray)."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # headless: runs on clusters and in CI
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from synthgen.data import tensor_to_image  # noqa: E402
from synthgen.steps import render  # noqa: E402


def _save(fig, path: str) -> str:
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_loss_curves(history: list[dict[str, float]], path: str) -> str:
    """One panel per named metric ('loss/...' and 'val/...') against epoch."""
    keys = sorted({k for h in history for k in h if "/" in k})
    if not keys:
        raise ValueError("plot_loss_curves: the history holds no metrics")
    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(h.get("epoch", i + 1), h[key]) for i, h in enumerate(history) if key in h]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def _show(ax, img, title: str) -> None:
    ax.imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=255)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def save_sample_grid(nets: dict, masks: torch.Tensor, reals: torch.Tensor | None, path: str,
                     num_samples: int = 1, seed: int = 0) -> str:
    """Rows of mask | real | generated (x num_samples); `reals` may be None (no real image)."""
    device = next(iter(nets.values())).parameters().__next__().device
    gen = torch.Generator(device=device).manual_seed(seed)
    fakes = render(nets, masks.to(device), num_samples, generator=gen).cpu()
    cols = 1 + (reals is not None) + num_samples
    fig, axes = plt.subplots(len(masks), cols, figsize=(2.2 * cols, 2.2 * len(masks)), squeeze=False)
    for r in range(len(masks)):
        c = 0
        _show(axes[r, c], (masks[r].permute(1, 2, 0).numpy() * 255), "mask")
        if reals is not None:
            c += 1
            _show(axes[r, c], tensor_to_image(reals[r]), "real")
        for s in range(num_samples):
            _show(axes[r, c + 1 + s], tensor_to_image(fakes[r, s]), f"generated {s + 1}" if num_samples > 1 else "generated")
    fig.tight_layout()
    return _save(fig, path)


def summary_text(summary: dict) -> str:
    """The one-screen end-of-run summary."""
    first, last = summary.get("first_epoch", {}), summary.get("last_epoch", {})
    lines = ["", "=" * 64, f"synthgen {summary['model']}: {summary['epochs']} epochs in {summary['seconds']:.0f}s"
             f" ({summary['images_per_s']:.1f} images/s)", "-" * 64, f"{'metric':<24}{'first epoch':>16}{'last epoch':>16}"]
    for key in sorted(k for k in last if "/" in k):
        lines.append(f"{key:<24}{first.get(key, float('nan')):>16.4f}{last[key]:>16.4f}")
    lines.append("-" * 64)
    lines += [f"{name:<12}{path}" for name, path in summary["outputs"].items()]
    lines.append("=" * 64)
    return "\n".join(lines)


def plot_quality_metrics(report: dict, save_path: str) -> str:
    """Score histograms (accepted vs rejected, threshold on the overall score) and example samples.

    `report`: {"scores": {metric: [floats]}, "accepted": [bools], "threshold": float,
    "examples": {"accepted": [(image, mask, score)], "rejected": [...]}} (see DatasetWriter.quality_report).
    """
    import numpy as np

    scores, accepted = report["scores"], np.asarray(report["accepted"], bool)
    metrics = [m for m, v in scores.items() if v and not np.all(np.isnan(v))]
    examples = [(kind, ex) for kind in ("accepted", "rejected") for ex in report.get("examples", {}).get(kind, [])]
    cols = max(len(metrics), 4)
    rows = 1 + (2 if examples else 0)
    fig = plt.figure(figsize=(3.2 * cols, 3.0 * rows))
    for i, m in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        values = np.asarray(scores[m], float)
        bins = np.linspace(np.nanmin(values), max(np.nanmax(values), np.nanmin(values) + 1e-6), 21)
        ax.hist([values[accepted], values[~accepted]], bins=bins, stacked=True,
                label=[f"accepted ({accepted.sum()})", f"rejected ({(~accepted).sum()})"], color=["tab:green", "tab:red"])
        if m == "overall_quality":
            ax.axvline(report["threshold"], color="k", linestyle="--", label=f"threshold {report['threshold']:g}")
        ax.set_title(m, fontsize=9)
        ax.legend(fontsize=6)
    for j, (kind, (image, mask, score)) in enumerate(examples[: 2 * cols]):
        ax = fig.add_subplot(rows, cols, cols + 1 + j)
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
        ax.contour(mask > 0, levels=[0.5], colors="yellow", linewidths=0.5)
        ax.set_title(f"{kind} {score:.2f}", fontsize=8, color="tab:green" if kind == "accepted" else "tab:red")
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, save_path)


def generate_summary_text(result, manifest: dict) -> str:
    """The one-screen end-of-generation summary."""
    c = manifest["counts"]
    lines = ["", "=" * 64, f"synthgen generate: {c['generated']} candidates from {c['sources']} source masks "
             f"in {result.seconds:.0f}s ({result.samples_per_s:.1f} samples/s)", "-" * 64,
             f"accepted   {c['accepted']:>8}  ({100.0 * c['accepted'] / max(1, c['generated']):.0f}%)",
             f"rejected   {c['rejected']:>8}"]
    lines += [f"  {reason:<20}{n:>6}" for reason, n in c["rejected_by_reason"].items()]
    t = manifest.get("threshold")
    if t:
        relative = f"  ({t['spec']} x real reference {t['real_reference']:.4f})" if t["real_reference"] is not None else ""
        lines.append(f"threshold  {t['resolved']:>8.4f}{relative}")
    lines.append("mean scores: " + "  ".join(f"{k} {v:.3f}" for k, v in manifest["score_means"].items() if v is not None))
    realism = manifest.get("realism") or {}
    if realism.get("figures"):
        from synthgen.realism import format_realism

        lines.append(f"realism ({realism['synthetic']} vs {realism['real']} real): {format_realism(realism['figures'])}")
    elif realism:
        lines.append(f"realism: not measured ({realism['reason']})")
    lines += ["-" * 64, f"dataset    {result.out}", f"quality    {os.path.join(result.out, 'quality.png')}",
              f"config     {os.path.join(result.out, 'config.yaml')}"]
    if realism.get("figures"):
        lines.append(f"realism    {os.path.join(result.out, 'realism.png')}")
    lines.append("=" * 64)
    return "\n".join(lines)


def plot_downstream(summary: dict, ks: list[int], save_path: str) -> str:
    """Test Dice against the number of real pairs k, one line per condition (mean ± std over seeds)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for cond, by_k in summary.items():
        points = sorted((int(k), v["dice_mean"], v["dice_std"]) for k, v in by_k.items())
        if len(points) == 1 and points[0][0] not in ks:  # a reference (all real pairs): a horizontal line
            ax.axhline(points[0][1], linestyle="--", color="gray", label=f"{cond} (k={points[0][0]})")
            continue
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                    marker="o", capsize=3, label=cond)
    ax.set_xlabel("real training pairs k")
    ax.set_ylabel("test Dice (foreground)")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, save_path)


def plot_curves(curves: dict, save_path: str) -> str:
    """Test Dice against segmenter step, one panel per k, one line per condition (mean ± std band over
    seeds); a dot marks where each mean curve came within evaluate.PLATEAU_TOLERANCE of its best."""
    ks = sorted({k for by_k in curves.values() for k in by_k}, key=int)
    fig, axes = plt.subplots(1, len(ks), figsize=(5 * len(ks), 3.6), squeeze=False, sharey=True)
    for ax, k in zip(axes.flat, ks):
        for cond, by_k in curves.items():
            if k not in by_k:
                continue
            v = by_k[k]
            mean, std = torch.tensor(v["dice_mean"]), torch.tensor(v["dice_std"])
            line, = ax.plot(v["step"], v["dice_mean"], label=cond)
            ax.fill_between(v["step"], (mean - std).tolist(), (mean + std).tolist(), color=line.get_color(), alpha=0.15)
            i = v["step"].index(v["plateau_step"])
            ax.plot(v["plateau_step"], v["dice_mean"][i], "o", color=line.get_color(), markersize=4)
        ax.set_title(f"k={k}")
        ax.set_xlabel("segmenter step")
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("test Dice (foreground)")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, save_path)


def plot_search(rows: list[dict], params: list, metric: str, save_path: str) -> str:
    """The objective of every trial against each searched parameter (log axis for loguniform ones);
    marker fill shows whether the trial ran all its epochs."""
    fig, axes = plt.subplots(1, len(params), figsize=(4 * len(params), 3.2), squeeze=False)
    scored = [r for r in rows if r[metric] == r[metric]]  # NaN != NaN: trials without a value
    for ax, p in zip(axes.flat, params):
        for status, style in (("completed", "o"), ("stopped early", "x")):
            pts = [(r[p.key], r[metric]) for r in scored if r["status"] == status]
            if pts:
                xs = [str(x) for x, _ in pts] if p.kind == "choice" else [x for x, _ in pts]
                ax.scatter(xs, [y for _, y in pts], marker=style, label=status)
        if p.kind == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel(p.key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    if scored:
        axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, save_path)


def search_summary_text(summary: dict, out: str) -> str:
    """The one-screen end-of-search summary."""
    metric = summary["objective"]

    def describe(row: dict | None) -> str:
        if not row:
            return "not among the trials"
        params = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                           if k not in ("trial_id", "status", "epochs", "seconds", "node", metric))
        return f"{metric} {row[metric]:.4f} after {row['epochs']} epochs  {params}"

    lines = ["", "=" * 72,
             f"synthgen tune: {summary['trials']} of {summary['requested']} trials ran in {summary['seconds']:.0f}s "
             f"({summary['completed']} completed, {summary['stopped_early']} stopped early, {summary['errors']} errors)",
             "-" * 72, f"objective  {metric} ({summary['mode']})",
             f"best       {describe(summary['best'])}", f"default    {describe(summary['default'])}", "-" * 72]
    if summary["trials"] < summary["requested"]:
        lines.append("the search did not finish: run the same command with --resume to continue it")
    lines += [f"{'trials':<11}{os.path.join(out, 'trials.csv')} (.md)",
              f"{'plot':<11}{os.path.join(out, 'objective_vs_params.png')}"]
    lines += [f"{'best ' + k:<13}{v}" for k, v in summary["best_configs"].items()]
    lines += ["=" * 72]
    return "\n".join(lines)


def plot_realism(real_images: list, synth_images: list, report: dict | None, save_path: str,
                 examples: int = 4) -> str:
    """Real vs synthetic crops side by side (top rows) and their mean radially averaged power spectra
    (log scale), the headline realism figures in the title.

        plot_realism(reals, fakes, realism_report(...), "realism.png")
    """
    import numpy as np

    from synthgen.realism import format_realism, radial_spectrum, to_gray

    n = min(examples, len(real_images), len(synth_images))
    fig = plt.figure(figsize=(2.4 * max(n, 3), 7.5))
    for row, (name, images) in enumerate((("real", real_images), ("synthetic", synth_images))):
        for j in range(n):
            ax = fig.add_subplot(3, max(n, 3), row * max(n, 3) + j + 1)
            _show(ax, images[j] if images[j].ndim == 3 else images[j][:, :, None], name)
    ax = fig.add_subplot(3, 1, 3)
    for name, images in (("real", real_images), ("synthetic", synth_images)):
        spectrum = np.mean([radial_spectrum(to_gray(im)) for im in images], axis=0)
        freqs = (np.arange(len(spectrum)) + 0.5) * 0.5 / len(spectrum)
        ax.semilogy(freqs[1:], spectrum[1:] + 1e-12, label=f"{name} ({len(images)})")
    ax.set_xlabel("frequency (cycles/px)")
    ax.set_ylabel("power")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(format_realism(report) if report else "realism: not measured", fontsize=9)
    fig.tight_layout()
    return _save(fig, save_path)
