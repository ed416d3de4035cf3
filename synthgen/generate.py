"""Generation at scale on Ray Data: masks -> variations -> generator actors -> scorer -> filter -> writers.

    synthgen generate --checkpoint runs/demo --num-variations 8 --out runs/demo_synth

Each stage is a `map_batches` over *groups*: one row per source mask holding all of its candidates,
so the scorer can measure diversity among one mask's variations without a shuffle. The scorer
explodes groups into one row per candidate; the driver streams them into `writers.DatasetWriter`.
Rows keep their order (`preserve_order`) and every random draw is seeded from (seed, source,
variation), so the same seed gives byte-identical data files. Ray starts in synthgen.ray_session.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import ray
import torch

from synthgen import console, ray_session
from synthgen.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from synthgen.config import (Config, ConfigError, GenerateConfig, VariationConfig, parse_resources,
                             parse_threshold, split_list)
from synthgen.device import inference_batch_size, prepare_module, to_device
from synthgen.data import (DataError, Source, binarise_mask, find_masks, find_pairs, image_channels,
                           load_image, load_mask, tiles)
from synthgen.quality import assess_quality, parse_weights, rejection_reason, resolve_threshold
from synthgen.steps import render_seeded, rendering_net
from synthgen.storage import download_dir, exists, is_uri, pack_dir, unpack_dir
from synthgen.variations import KINDS, add_input_noise, make_variation, variation_plan
from synthgen.writers import DatasetWriter, decode_png, encode_png


def resolve_checkpoint(path: str) -> str:
    """Accept a `synthgen train` run directory (uses its model/) or a checkpoint directory; either may
    be a URI (s3://..., file://...), which is downloaded to a temporary folder first."""
    if not path:
        raise ConfigError("generate needs --checkpoint DIR (a `synthgen train` run or its model/ directory)")
    if is_uri(path):
        model = path.rstrip("/") + "/model"
        path = download_dir(model if exists(model) else path, tempfile.mkdtemp(prefix="synthgen_ckpt_"))
    model_dir = os.path.join(path, "model")
    return model_dir if os.path.isfile(os.path.join(model_dir, "state.json")) else path


def load_sources(g: GenerateConfig, model_cfg: Config, channels: int) -> list[Source]:
    """Source masks (and real images where known) from a folder, a Parquet file or the training pairs."""
    size, invert = model_cfg.data.image_size, model_cfg.data.invert_mask
    items: list[tuple[str, np.ndarray, np.ndarray | None, str]] = []
    if g.masks.endswith(".parquet"):
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(g.masks)
        except (OSError, ValueError) as e:
            raise DataError(f"{g.masks}: not a readable Parquet file ({e})") from None
        if "mask" not in table.column_names:
            raise DataError(f"{g.masks}: no 'mask' column (PNG bytes) among {table.column_names}")
        ids = table.column("id").to_pylist() if "id" in table.column_names else [f"row{i:06d}" for i in range(len(table))]
        for sid, data in zip(ids, table.column("mask").to_pylist()):
            try:
                gray = decode_png(data)
            except Exception as e:  # noqa: BLE001 - report which row is broken
                raise DataError(f"{g.masks}: row '{sid}' mask is not a PNG ({e})") from None
            origin = f"{g.masks}[{sid}]"
            if gray.ndim != 2:
                raise DataError(f"{origin}: mask must be a gray PNG, got shape {gray.shape}")
            items.append((str(sid), binarise_mask(gray, origin, invert), None, origin))
    elif g.masks and not g.images:
        for stem, path in find_masks(g.masks):
            items.append((stem, load_mask(path, invert), None, path))
    else:
        images = g.images or model_cfg.data.images
        masks = g.masks or model_cfg.data.masks
        pairs = find_pairs(images, masks)
        if image_channels(pairs) != channels and not (channels == 3 and image_channels(pairs) == 1):
            raise DataError(f"{images}: images have {image_channels(pairs)} channel(s) but the checkpoint "
                            f"generates {channels} (checkpoint/image channel mismatch)")
        for p in pairs:
            items.append((p.stem, load_mask(p.mask, invert), load_image(p.image, channels), p.mask))
    if not items:
        raise DataError(f"{g.masks or 'training pairs'}: no source masks")
    return [t for sid, mask, image, origin in items for t in tiles(sid, mask, image, size, origin)]


# ---------------------------------------------------------------- stage 1: variations (CPU tasks)
def make_variation_groups(batch: dict, num_variations: int, kinds: list[str], seed: int,
                          vcfg: VariationConfig) -> dict:
    """One group per source: N varied masks, their references, generator input noise and seeds."""
    out: dict[str, list] = {k: [] for k in ("source_id", "has_image", "source_mask", "var_mask", "ref_mask",
                                            "ref_image", "noise_sigma", "seed", "kind", "params")}
    for i in range(len(batch["source_id"])):
        mask, image, has_image = batch["mask"][i], batch["image"][i], bool(batch["has_image"][i])
        plan = variation_plan(num_variations, kinds, seed, int(batch["source_index"][i]))
        group = [make_variation(mask, kind, s, vcfg, image if has_image else None) for kind, s in plan]
        out["source_id"].append(batch["source_id"][i])
        out["has_image"].append(has_image)
        out["source_mask"].append(mask)
        out["var_mask"].append(np.stack([v.mask for v, _ in group]))
        out["ref_mask"].append(np.stack([v.reference_mask for v, _ in group]))
        out["ref_image"].append(np.stack([img if img is not None else image for _, img in group]))
        out["noise_sigma"].append(np.array([v.noise_sigma for v, _ in group], np.float32))
        out["seed"].append(np.array([v.seed for v, _ in group], np.int64))
        out["kind"].append(np.array([KINDS.index(v.kind) for v, _ in group], np.int8))
        out["params"].append(json.dumps([v.params for v, _ in group], sort_keys=True))
    return {k: np.stack(v) if isinstance(v[0], np.ndarray) else np.array(v) for k, v in out.items()}


# ---------------------------------------------------------------- stage 2: generator actors
def _local_dir(source) -> str:
    """A directory path as is, or a packed directory (ObjectRef) unpacked into a temporary folder."""
    if isinstance(source, str):
        return source
    return unpack_dir(ray.get(source), tempfile.mkdtemp(prefix="synthgen_actor_"))


class GeneratorActor:
    """Loads the checkpoint(s) once per actor and renders every candidate of a batch of groups."""

    def __init__(self, checkpoints: dict, gpu: bool, precision: str, segmenter="", max_batch: int = 0,
                 channels_last: bool = False, compile: bool = False,
                 score_weights: dict[str, float] | None = None, sample_steps: int = 0) -> None:
        """checkpoints: model name -> directory, or an object-store ref of storage.pack_dir(directory)
        (what the pipeline passes, so actors on any node get the weights); segmenter likewise.
        max_batch: candidates per forward pass, 0 = device.inference_batch_size. score_weights: score
        the candidates here, batched on the actor's device (generate.scoring 'torch'), else None.
        sample_steps: DDIM steps of a diffusion checkpoint, 0 = its own (generate.sample_steps)."""
        from synthgen.segment import load_segmenter

        self.device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
        self.models = {name: load_checkpoint(_local_dir(c), self.device).nets for name, c in checkpoints.items()}
        for nets in self.models.values():
            # Only the rendering network is needed: free the discriminator's memory, or that of the
            # diffusion model's trained weights when their average renders.
            keep = rendering_net(nets)
            for name in [name for name, net in nets.items() if net is not keep]:
                del nets[name]
            for net in nets.values():
                prepare_module(net, channels_last, compile)
        self.precision, self.max_batch, self.channels_last = precision, max_batch, channels_last
        self.sample_steps = sample_steps
        self.score_weights = score_weights
        self.chunk: dict[str, int] = {}
        self.segmenter = load_segmenter(_local_dir(segmenter), self.device) if segmenter else None
        self.node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""

    def _render(self, name: str, inputs: torch.Tensor, seeds: np.ndarray) -> np.ndarray:
        """render_seeded in forward passes of self.chunk[name] candidates (sized once, on first use)."""
        nets = self.models[name]
        if name not in self.chunk:
            self.chunk[name] = self.max_batch or inference_batch_size(
                lambda x: render_seeded(nets, x, np.zeros(len(x), np.int64), self.precision, self.sample_steps),
                inputs[:1])
        c = self.chunk[name]
        return np.concatenate([render_seeded(nets, inputs[i:i + c], seeds[i:i + c], self.precision, self.sample_steps)
                               for i in range(0, len(inputs), c)])

    def __call__(self, batch: dict) -> dict:
        b, n, s, _ = batch["var_mask"].shape
        batch["node_id"] = np.array([self.node_id] * b)  # which node rendered it: the manifest counts them
        masks = batch["var_mask"].reshape(b * n, s, s)
        sigmas, seeds = batch["noise_sigma"].reshape(-1), batch["seed"].reshape(-1)
        inputs = np.stack([add_input_noise(m, float(sg), int(sd)) if sg > 0 else m.astype(np.float32)
                           for m, sg, sd in zip(masks, sigmas, seeds)])
        inputs_t = to_device(torch.from_numpy(inputs).unsqueeze(1), self.device, self.channels_last)
        for name in self.models:
            images = self._render(name, inputs_t, seeds)
            batch[f"generated_{name}"] = images.reshape(b, n, s, s, -1)
            if self.segmenter is not None:
                from synthgen.segment import label_fidelity

                batch[f"label_fidelity_{name}"] = np.array(
                    label_fidelity(self.segmenter, list(images), list(masks), s), np.float64).reshape(b, n)
            if self.score_weights is not None:
                self._score(batch, name, images)
        return batch

    def _score(self, batch: dict, name: str, images: np.ndarray) -> None:
        """quality_torch.score_batch over all candidates of the batch -> columns q_<metric>_<model> (b, n)."""
        from synthgen.quality_torch import score_batch

        b, n, s, _ = batch["var_mask"].shape

        def flat(key: str) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(batch[key].reshape(b * n, *batch[key].shape[2:])))

        fidelity = batch.get(f"label_fidelity_{name}")
        scores = score_batch(
            torch.from_numpy(images).to(self.device), flat("var_mask").to(self.device),
            flat("ref_image").to(self.device), has_ref=torch.from_numpy(np.repeat(batch["has_image"], n)),
            source_masks=flat("ref_mask"), groups=torch.arange(b).repeat_interleave(n),
            weights=self.score_weights,
            extra=None if fidelity is None else {"label_fidelity": torch.from_numpy(fidelity.reshape(-1))})
        for metric, values in scores.items():
            batch[f"q_{metric}_{name}"] = values.cpu().numpy().reshape(b, n)


# ---------------------------------------------------------------- stage 3: scorer (CPU tasks)
def score_groups(batch: dict, weights: dict[str, float], threshold: float, models: list[str]) -> dict:
    """Score every candidate (diversity within its group), keep the better model's image in hybrid
    mode, and explode groups into candidate rows with accepted / reject_reason."""
    rows: dict[str, list] = {k: [] for k in ("id", "source_id", "image", "mask", "height", "width", "model",
                                             "variation", "params", "seed", "ssim", "iou", "edges", "diversity",
                                             "label_fidelity", "overall_quality", "accepted", "reject_reason",
                                             "node_id")}
    for g in range(len(batch["source_id"])):
        has_image = bool(batch["has_image"][g])
        w = weights if has_image else {k: v for k, v in weights.items() if k != "ssim"}
        params = json.loads(batch["params"][g])
        best: list[tuple[float, str, dict, np.ndarray]] = []
        for name in models:
            images = list(batch[f"generated_{name}"][g])
            scored = [k[2:-len(name) - 1] for k in batch if k.startswith("q_") and k.endswith(f"_{name}")]
            fidelity = batch.get(f"label_fidelity_{name}")
            for v, img in enumerate(images):
                if scored:  # already scored in the generator actor (generate.scoring 'torch')
                    sc = {m: float(batch[f"q_{m}_{name}"][g][v]) for m in scored}
                    if not has_image:
                        sc.pop("ssim", None)
                else:
                    sc = assess_quality(img, batch["var_mask"][g][v],
                                        batch["ref_image"][g][v] if has_image else None,
                                        images[:v] + images[v + 1:], w, source_mask=batch["ref_mask"][g][v],
                                        extra=None if fidelity is None else {"label_fidelity": float(fidelity[g][v])})
                if len(best) <= v:
                    best.append((sc["overall_quality"], name, sc, img))
                elif sc["overall_quality"] > best[v][0]:
                    best[v] = (sc["overall_quality"], name, sc, img)
        for v, (overall, name, sc, img) in enumerate(best):
            mask = batch["var_mask"][g][v]
            empty = not mask.any()
            reason = "empty_mask" if empty else rejection_reason(sc, w, threshold)
            sid = str(batch["source_id"][g])
            rows["id"].append(f"{sid}_v{v:03d}")
            rows["source_id"].append(sid)
            rows["node_id"].append(str(batch["node_id"][g]) if "node_id" in batch else "")
            rows["image"].append(encode_png(img))
            rows["mask"].append(encode_png(mask * 255))
            rows["height"].append(mask.shape[0])
            rows["width"].append(mask.shape[1])
            rows["model"].append(name)
            rows["variation"].append(KINDS[int(batch["kind"][g][v])])
            rows["params"].append(json.dumps(params[v], sort_keys=True))
            rows["seed"].append(int(batch["seed"][g][v]))
            for m in ("ssim", "iou", "edges", "diversity", "label_fidelity"):
                rows[m].append(float(sc.get(m, float("nan"))))
            rows["overall_quality"].append(float(overall))
            rows["accepted"].append(reason is None)
            rows["reject_reason"].append(reason or "")
    return {k: np.array(v, dtype=object if k in ("image", "mask") else None) for k, v in rows.items()}


# ---------------------------------------------------------------- driver
def checkpoint_hash(paths: dict[str, str]) -> str:
    """sha256 over the weights files of the checkpoints used."""
    h = hashlib.sha256()
    for name in sorted(paths):
        for f in sorted(os.listdir(paths[name])):
            if f.endswith(".safetensors"):
                with open(os.path.join(paths[name], f), "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()


def _checkpoints(g: GenerateConfig) -> tuple[dict[str, str], LoadedCheckpoint]:
    main_dir = resolve_checkpoint(g.checkpoint)
    main = load_checkpoint(main_dir)
    model = g.model or main.model
    if model != "hybrid":
        if model != main.model:
            raise CheckpointError(f"{main_dir}: holds a {main.model} model, not {model}")
        return {model: main_dir}, main
    if main.model != "pix2pix" or not g.vae_checkpoint:
        raise ConfigError("--model hybrid needs --checkpoint <pix2pix run> and --vae-checkpoint <vae run>")
    vae_dir = resolve_checkpoint(g.vae_checkpoint)
    vae = load_checkpoint(vae_dir)
    if vae.model != "vae":
        raise CheckpointError(f"{vae_dir}: --vae-checkpoint holds a {vae.model} model")
    if (vae.cfg.data.image_size, vae.channels) != (main.cfg.data.image_size, main.channels):
        raise CheckpointError(f"{vae_dir}: VAE is {vae.cfg.data.image_size}px/{vae.channels}ch but the pix2pix "
                              f"checkpoint is {main.cfg.data.image_size}px/{main.channels}ch")
    return {"pix2pix": main_dir, "vae": vae_dir}, main


def torch_scoring(g: GenerateConfig) -> bool:
    """generate.scoring resolved: score in the generator actors (batched torch) or in CPU tasks (skimage)."""
    return g.scoring == "torch" or (g.scoring == "auto" and g.gpu)


def build_pipeline(sources: list[Source], cfg: Config, checkpoints: dict[str, str], channels: int,
                   segmenter: str, threshold: float) -> "ray.data.Dataset":
    """threshold: generate.threshold resolved to a number (run_threshold)."""
    g = cfg.generate
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # byte-identical outputs for a seed
    size = sources[0].mask.shape[0]
    blank = np.zeros((size, size, channels), np.uint8)
    items = [{"source_index": i, "source_id": s.id, "mask": s.mask, "has_image": s.image is not None,
              "image": s.image if s.image is not None else blank} for i, s in enumerate(sources)]
    n_blocks = max(1, -(-len(items) // g.batch_size))
    ds = ray.data.from_items(items, override_num_blocks=n_blocks)
    ds = ds.map_batches(make_variation_groups, batch_size=g.batch_size, num_cpus=0.25,
                        fn_kwargs={"num_variations": g.num_variations, "kinds": split_list(g.variations),
                                   "seed": g.seed, "vcfg": cfg.variations})
    actor_resources = {"num_gpus": 1} if g.gpu else {"num_cpus": g.cpus_per_actor}
    if g.actor_resources:
        actor_resources["resources"] = parse_resources(g.actor_resources)
    restarts = {}
    if len([n for n in ray.nodes() if n["Alive"]]) == 1:
        # Ray Data restarts a lost actor by default, which guards against losing a node; on one node
        # there is none to fail over to, and Ray would print on every run that it cannot restart actors
        # whose constructor arguments live in the object store reliably (ray-project/ray#53727). A
        # failed generation leaves no partial dataset, and the same seed regenerates it exactly.
        restarts["max_restarts"] = 0
    with warnings.catch_warnings():
        # Ray 2.60's map_batches has no named parameter for max_restarts; the generic remote-args
        # path it goes through is deprecated (removal announced for Ray 2.64: revisit then).
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ds.map_batches(GeneratorActor, batch_size=g.batch_size,
                            compute=ray.data.ActorPoolStrategy(min_size=g.actors_min, max_size=g.actors_max),
                            fn_constructor_kwargs={
                                "checkpoints": {k: ray.put(pack_dir(v)) for k, v in checkpoints.items()},
                                "gpu": g.gpu, "precision": g.precision,
                                "segmenter": ray.put(pack_dir(segmenter)) if segmenter else "",
                                "max_batch": g.max_batch, "channels_last": g.channels_last, "compile": g.compile,
                                "score_weights": parse_weights(g.weights) if torch_scoring(g) else None,
                                "sample_steps": g.sample_steps},
                            **actor_resources, **restarts)
    return ds.map_batches(score_groups, batch_size=g.batch_size, num_cpus=0.25,
                          fn_kwargs={"weights": parse_weights(g.weights), "threshold": threshold,
                                     "models": list(checkpoints)})


def fidelity_segmenter(g: GenerateConfig, sources: list[Source], out_tmp: str) -> str:
    """'' (off), a given segmenter directory (checked), or one trained now on the sources' real pairs
    ('auto', saved into the dataset under segmenter/ so the scores can be reproduced)."""
    from synthgen.segment import fit_segmenter, load_segmenter, save_segmenter

    if not g.segmenter:
        return ""
    if g.segmenter != "auto":
        try:
            load_segmenter(g.segmenter)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        return os.path.abspath(g.segmenter)
    real = [(s.image, s.mask) for s in sources if s.image is not None]
    if not real:
        raise ConfigError("--segmenter auto needs sources with real images (the training pairs or --images)")
    size = sources[0].mask.shape[0]
    console.line(f"training the label-fidelity segmenter on {len(real)} real tiles ({g.segmenter_steps} steps)")
    model = fit_segmenter(real, size, g.segmenter_steps, seed=g.seed)
    return save_segmenter(model, os.path.join(out_tmp, "segmenter"))


def run_threshold(g: GenerateConfig, sources: list[Source], weights: dict[str, float],
                  segmenter: str = "") -> tuple[float, float | None]:
    """(absolute threshold, real reference score or None): generate.threshold resolved once per run;
    'real:F' is relative to the sources' real tiles (quality.real_reference_score, same weights)."""
    real = [(s.image, s.mask) for s in sources if s.image is not None]
    fidelity = None
    if parse_threshold(g.threshold)[0] == "real" and weights.get("label_fidelity") and real and segmenter:
        from synthgen.segment import label_fidelity, load_segmenter

        fidelity = label_fidelity(load_segmenter(segmenter), [image for image, _ in real],
                                  [mask for _, mask in real], sources[0].mask.shape[0])
    try:
        return resolve_threshold(g.threshold, real, weights, fidelity)
    except ValueError as e:
        raise ConfigError(f"generate.threshold: {e}") from None


def _stem(source_id: str) -> str:
    """The source image of a tile id ('slice00_y128x0' -> 'slice00'; see data.tiles)."""
    head, sep, tail = source_id.rpartition("_y")
    return head if sep and "x" in tail else source_id


def measure_realism(sources: list[Source], sample: list[dict], g: GenerateConfig) -> dict:
    """{'figures': flat realism figures or None, 'reason': why None, 'real': n, 'synthetic': n} of the
    sampled accepted images against (up to realism_samples, evenly spread) real source tiles."""
    from synthgen.realism import json_figures, realism_report

    real = [s for s in sources if s.image is not None]
    out = {"figures": None, "reason": "", "real": len(real), "synthetic": len(sample)}
    if not g.realism:
        out["reason"] = "generate.realism is off"
    elif len(real) < 2:
        out["reason"] = "no real images among the sources (mask-only sources)" if not real else \
            "fewer than 2 real source images"
    elif len(sample) < 2:
        out["reason"] = f"only {len(sample)} accepted image(s)"
    if out["reason"]:
        return out
    keep = np.unique(np.linspace(0, len(real) - 1, min(g.realism_samples, len(real))).round().astype(int))
    real = [real[i] for i in keep]
    fakes = [decode_png(r["image"]) for r in sample]
    fake_masks = [(decode_png(r["mask"]) > 0).astype(np.uint8) for r in sample]
    # Tiles of one source image stay on one side of the C2ST's split (real and synthetic alike).
    figures = realism_report([s.image for s in real], [s.mask for s in real], fakes, fake_masks, seed=g.seed,
                             real_groups=[_stem(s.id) for s in real],
                             synth_groups=[_stem(str(r["source_id"])) for r in sample])
    out.update({"figures": json_figures(figures), "real": len(real)})
    out["_images"] = ([s.image for s in real], fakes)  # for realism.png; dropped before the manifest
    return out


@dataclass
class GenerateResult:
    out: str
    generated: int
    accepted: int
    rejected_by_reason: dict[str, int]
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds else 0.0


def generate(cfg: Config, overwrite: bool = False) -> GenerateResult:
    """Run the whole pipeline; the dataset appears at cfg.generate.out only when complete."""
    from synthgen import plots  # here, not at the top: generator actors import this module, not matplotlib

    t0 = time.time()
    g = cfg.generate
    try:
        weights = parse_weights(g.weights)
    except ValueError as e:
        raise ConfigError(f"generate.weights: {e}") from None
    if weights.get("label_fidelity") and not g.segmenter:
        raise ConfigError("generate.weights uses label_fidelity but no segmenter is set (--segmenter auto|DIR)")
    checkpoints, main = _checkpoints(g)
    if g.gpu and not torch.cuda.is_available():
        raise ConfigError("--gpu given but CUDA is not available on this machine")
    sources = load_sources(g, main.cfg, main.channels)
    console.line(f"synthgen generate: {len(sources)} source masks x {g.num_variations} variations "
                 f"({g.variations}) with {'+'.join(checkpoints)} from {os.path.abspath(g.checkpoint)} "
                 f"-> {os.path.abspath(g.out)}")
    writer = DatasetWriter(g.out, overwrite, g.png, g.keep_rejected, g.shard_rows,
                           sample_size=g.realism_samples if g.realism else 0, sample_seed=g.seed)
    with writer:
        cfg.save(writer.tmp)  # lands in the dataset with it
        ray_session.ensure()
        segmenter = fidelity_segmenter(g, sources, writer.tmp)
        threshold, reference = run_threshold(g, sources, weights, segmenter)
        if reference is not None:
            console.line(f"threshold {g.threshold}: {threshold:.4f} (real reference score {reference:.4f})")
        ds = build_pipeline(sources, cfg, checkpoints, main.channels, segmenter, threshold)
        with console.progress("generating", len(sources) * g.num_variations, "candidate") as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                writer.add(batch)
                bar.update(len(batch["id"]), f"accepted {writer.accepted}  rejected "
                                             f"{writer.generated - writer.accepted}  {bar.rate():.1f}/s")
        seconds = time.time() - t0
        if writer.accepted == 0:
            console.warn(f"no candidate passed the threshold ({threshold:.4f}): the dataset is empty; lower "
                         "--threshold (README, \"Quality scores\")")
        plots.plot_quality_metrics(writer.quality_report(threshold), os.path.join(writer.tmp, "quality.png"))
        realism = measure_realism(sources, writer.sample, g)
        if "_images" in realism:
            plots.plot_realism(*realism.pop("_images"), realism["figures"], os.path.join(writer.tmp, "realism.png"))
        manifest = {
            "config": {"generate": asdict(g), "variations": asdict(cfg.variations)},
            "checkpoints": {k: os.path.abspath(v) for k, v in checkpoints.items()},
            "checkpoint_sha256": checkpoint_hash(checkpoints),
            # the absolute threshold applied; real_reference: the real images' median score ('real:F')
            "threshold": {"spec": str(g.threshold), "resolved": threshold, "real_reference": reference},
            "counts": {"sources": len(sources), "generated": writer.generated, "accepted": writer.accepted,
                       "rejected": writer.generated - writer.accepted,
                       "rejected_by_reason": dict(sorted(writer.rejected_by_reason.items()))},
            # None for a metric that was not computed (e.g. label_fidelity without a segmenter): JSON has no NaN
            "score_means": {m: float(np.nanmean(v)) if v and not np.all(np.isnan(v)) else None
                            for m, v in writer.scores.items()},
            "run": {"seconds": round(seconds, 2), "samples_per_s": round(writer.generated / seconds, 2),
                    "scoring": "torch" if torch_scoring(g) else "skimage",
                    "candidates_per_node": dict(sorted(writer.nodes.items())),
                    "duplicates_dropped": writer.duplicates},
            "realism": realism,
        }
        out = writer.finish(manifest)
    result = GenerateResult(out, writer.generated, writer.accepted, writer.rejected_by_reason, seconds)
    console.line(plots.generate_summary_text(result, manifest))
    return result
