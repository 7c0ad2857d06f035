"""App latency: cold start to first answer, and /search round trips through gradio_client.

    python benchmarks/bench_app.py [--model URI] [--gallery DIR] [--queries 30]

Starts `python app.py` in a subprocess (as a user would), measures the time from
process start to the first successful /search answer, then the p50/p90 of /search
round trips (upload of the image file included) with explanations off and on.
Two starts are measured side by side: a fresh machine's (CIR_CACHE pointing at a new,
empty folder, as a Space that wakes up) and a warm one (the same folder, now holding
the index). By default it measures the app's default (the embedded scenes3d-mini model on
the shipped scenes3d test split, with its index seed); without that model it measures a
tiny-test model on a small shapes gallery instead, and says so.

Targets with the embedded default on a 2-core CPU (today's figures: docs/performance.md):
first answer <= 7 s after a cold start, /search p50 <= 150 ms without explanations, <= 1 s with.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = REPO / "checkpoints" / "scenes3d-mini"
DEFAULT_GALLERY = REPO / "assets" / "scenes3d"
# Captions in the served benchmark's words: scenes3d's (the default), and shapes' for shapes galleries.
CAPTIONS = {"scenes3d": ["walk around to the other side of the table", "remove the red cube", "look from higher up",
                         "make the blue sphere large and zoom in", "add a green cylinder left of the gray cone",
                         "step back"],
            "shapes": ["make the red circle large", "remove the blue square", "mirror the scene",
                       "rotate the scene clockwise", "add a green triangle at the center", "make the yellow square purple"]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_setup(folder: Path) -> tuple[str, Path]:
    """A tiny-test checkpoint and a small shapes gallery, for machines without the default model."""
    sys.path.insert(0, str(REPO))
    import cir_core
    from cir_core.data.shapes import ShapesCounts, write_shapes_dataset

    checkpoint = cir_core.save_model(cir_core.create_model("tiny-test"), folder / "tiny-test")
    gallery = folder / "shapes"
    write_shapes_dataset(gallery, seed=0, counts=ShapesCounts(train=20, val=10, test=300), progress=False)
    return f"local-dir:{checkpoint}", gallery


def query_image(path: Path, shapes: bool) -> str:
    """The uploaded reference (the same file for every request): a shipped scenes3d view, or a
    shapes scene for a shapes gallery."""
    import random

    from PIL import Image

    views = sorted((DEFAULT_GALLERY / "images").glob("*.webp"))
    if views and not shapes:
        Image.open(views[0]).convert("RGB").save(path)
        return str(path)
    sys.path.insert(0, str(REPO))
    from cir_core.data.shapes import render_scene, sample_scene

    render_scene(sample_scene(random.Random(0)), 96).save(path)
    return str(path)


def start_app(model: str | None, gallery: Path | None, cache: Path, port: int,
              dataset: str | None = None) -> subprocess.Popen:
    # The failure view's background ranking is switched off: it would share the CPU with the timed requests.
    env = dict(os.environ, CIR_CACHE=str(cache), GRADIO_SERVER_PORT=str(port), CIR_PREPARE_FAILURES="0",
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    if model is not None:  # else the app's default
        env["CIR_MODEL"] = model
    if dataset is not None:
        env["CIR_DATASET"] = dataset
    if gallery is not None:
        env["CIR_GALLERY"] = str(gallery)
    return subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def first_answer(process: subprocess.Popen, port: int, image: str, captions: list[str], started: float,
                 timeout: float):
    """Poll until /search answers; returns (seconds since start, client)."""
    from gradio_client import Client, handle_file

    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}: {process.stderr.read()[-2000:]}")
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            client.predict(handle_file(image), captions[0], 10, False, api_name="/search")
            return time.perf_counter() - started, client
        except Exception:  # not up yet
            time.sleep(0.2)
    raise TimeoutError(f"no answer from app.py within {timeout:.0f} s")


def round_trips(client, image: str, captions: list[str], count: int, explain: bool) -> list[float]:
    from gradio_client import handle_file

    times = []
    for number in range(count):
        started = time.perf_counter()
        client.predict(handle_file(image), captions[number % len(captions)], 10, explain, api_name="/search")
        times.append(1000 * (time.perf_counter() - started))
    return times


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model URI (default: the app's default, checkpoints/scenes3d-mini)")
    parser.add_argument("--gallery", type=Path, help="gallery data folder (default: the app's default gallery)")
    parser.add_argument("--dataset", help="benchmark to serve (default: the app's default, scenes3d)")
    parser.add_argument("--queries", type=int, default=30, help="round trips per setting")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the first answer")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-app-"))
    model, gallery = args.model, args.gallery
    if model is None and args.dataset is None and not (DEFAULT_CHECKPOINT / "model.safetensors").is_file():
        print(f"NOTE: {DEFAULT_CHECKPOINT} does not exist yet; measuring the tiny-test model on a "
              "300-query shapes gallery instead (numbers are not those of the embedded default)")
        model, gallery = tiny_setup(work)
    cache = work / "cache"  # empty: the first start is a fresh machine's
    shapes = args.dataset == "shapes" or gallery is not None
    captions = CAPTIONS["shapes" if shapes else "scenes3d"]
    image = query_image(work / "query.png", shapes)

    print(f"model {model or 'the default'}, dataset {args.dataset or 'default'}, gallery {gallery or 'default'}, "
          f"{os.cpu_count()} CPUs")
    starts = []
    client = process = None
    for attempt in ("fresh machine (empty cache)", "warm start (cache from the first start)"):
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        port = free_port()
        started = time.perf_counter()
        process = start_app(model, gallery, cache, port, args.dataset)
        seconds, client = first_answer(process, port, image, captions, started, args.timeout)
        starts.append((attempt, seconds))
    try:
        round_trips(client, image, captions, 3, False)  # warm-up: first-use caches (vocabulary, allocator)
        round_trips(client, image, captions, 2, True)
        plain = round_trips(client, image, captions, args.queries, False)
        explained = round_trips(client, image, captions, max(5, args.queries // 2), True)
    finally:
        process.terminate()
        process.wait(timeout=30)

    print("\n| measurement | value |\n|---|---:|")
    for attempt, seconds in starts:
        print(f"| cold start to first answer, {attempt} | {seconds:.1f} s |")
    for name, values in (("explanations off", plain), ("explanations on", explained)):
        print(f"| /search round trip p50, {name} (n={len(values)}) | {percentile(values, 0.5):.0f} ms |")
        print(f"| /search round trip p90, {name} | {percentile(values, 0.9):.0f} ms |")
        print(f"| /search round trip mean, {name} | {statistics.mean(values):.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
