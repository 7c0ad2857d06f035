"""Train and evaluate the rows of a benchmark's results table at one budget, several at a time.

    python experiments/shapes_sweep.py --data data/shapes --device cuda --steps 500 --parallel 7 \\
        --deadline-seconds 420 --out OUT
    python experiments/shapes_sweep.py --benchmark scenes3d --data data/scenes3d --device cuda \\
        --steps 500 --parallel 4 --out OUT

Every row is the benchmark's recipe (`--config`, default configs/shapes_mini.json, look-alikes
included, or configs/scenes3d_mini.json) trained for `--steps` steps, differing only in what
the row names (query mode, prompt length, alignment weight, seed); `experiments/sweep_benchmarks.py`
lists the rows of each benchmark. Rows run as separate processes, `--parallel` at a
time, in the order of its rows (the seeds of the central comparison first). Each finished row is
evaluated on the benchmark's test split and appended at once to OUT/rows.jsonl, with its
training log in OUT/metrics.jsonl, so the rows finished before a stop survive. Every row
records where it came from: the checkout's commit (and whether its files had uncommitted
changes), a fingerprint of the data folder, the recipe's sha256, the device, threads and seconds. After
`--deadline-seconds` no row starts, and running rows are stopped (they leave no row).
Rows already in OUT/rows.jsonl are not trained again.

`python experiments/shapes_results.py --rows OUT/rows.jsonl` turns shapes rows into
docs/results.json, docs/results.md and the figures; `python experiments/scenes3d_results.py
--rows OUT/rows.jsonl` turns scenes3d rows into docs/results_scenes3d.md and its figures.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]  # run as a script from anywhere
from cir_core.data.folders import data_fingerprint  # noqa: E402
from cir_core.provenance import code_version, describe_device  # noqa: E402
from sweep_benchmarks import BENCHMARKS, SweepRow  # noqa: E402


def file_stem(name: str) -> str:
    return name.replace("/", "-")


# ---------------------------------------------------------------------- one row (a worker process)
def count_step_flops(trainer) -> float | None:
    """FLOPs (matrix products, forward and backward) of one more step of the same recipe.

    Counted after the row's model was saved, with the schedule held at a constant factor
    (OneCycleLR refuses a step past its end); the extra update is never evaluated.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda _: 1.0)
    try:
        with FlopCounterMode(display=False) as counter:
            trainer.train_step()
    except Exception as error:  # the count is a side figure: a counter failure must not lose the trained row
        print(f"flop count failed: {type(error).__name__}: {error}", file=sys.stderr)
        return None
    return float(counter.get_total_flops())


def training_loop_seconds(metrics_file: Path, steps: int) -> float:
    """Seconds from the first step to the last as the run logged them (no saving or set-up)."""
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        if record.get("step") == steps and "elapsed_s" in record:
            return float(record["elapsed_s"])
    raise ValueError(f"{metrics_file} has no record of step {steps}")


def train_and_evaluate(row: SweepRow, args: argparse.Namespace) -> dict:
    """Train `row` with the recipe, evaluate its saved model on the test split; the results row."""
    from cir_core.checkpoints import load_model
    from cir_core.train import Trainer
    from cir_core.train_config import TrainConfig

    run_dir = Path(args.work) / file_stem(row.name)
    commit, dirty = code_version()
    overrides = {"out_dir": str(run_dir), "data.root": str(args.data), "max_steps": str(args.steps),
                 "eval_every": "0", "checkpoint_every": str(args.steps), "num_threads": str(args.threads),
                 "device": args.device, "progress": "false", "seed": str(row.seed), **row.overrides}
    config = TrainConfig.from_file(args.config).with_overrides(overrides)
    start = time.monotonic()
    trainer = Trainer(config)
    setup_seconds = time.monotonic() - start
    start = time.monotonic()
    trainer.run()
    train_seconds = time.monotonic() - start
    loop_seconds = training_loop_seconds(run_dir / "metrics.jsonl", args.steps)
    flops = count_step_flops(trainer)
    model_config = trainer.model.config
    precision = trainer.precision
    del trainer

    start = time.monotonic()
    # The saved checkpoint (save_dtype of the recipe) is what is evaluated, as for the embedded default.
    model = load_model(run_dir / "best", device=args.device).eval()
    report = args.suite.evaluate(model, Path(args.data), args.max_test_queries, args.eval_batch_size)
    eval_seconds = time.monotonic() - start
    return {
        "name": row.name, "benchmark": args.suite.name, "group": row.group, "description": row.description,
        "table": "main",
        "steps": args.steps, "seed": row.seed, "query_mode": model_config.query_mode,
        "prompt_length": model_config.qformer.num_query_tokens, "align_weight": model_config.loss.align_weight,
        "recipe": os.path.relpath(args.config, ROOT) if Path(args.config).is_relative_to(ROOT) else str(args.config),
        # the recipe file's contents: a later edit of the same file is another recipe, not the same table
        "recipe_sha256": hashlib.sha256(Path(args.config).read_bytes()).hexdigest()[:16],
        "description_weight": model_config.loss.description_weight,
        "overrides": dict(row.overrides),
        "train_seconds": round(train_seconds, 2), "seconds_per_step": round(loop_seconds / args.steps, 4),
        "setup_seconds": round(setup_seconds, 2), "eval_seconds": round(eval_seconds, 2),
        "train_flops_per_step": flops, "device": describe_device(args.device), "precision": precision,
        "threads": args.threads, "concurrent_rows": args.parallel,
        # provenance: the code, data and recipe the row was produced from
        "code_commit": commit, "code_dirty": dirty, "data_sha256": data_fingerprint(Path(args.data)),
        "test_queries": report["num_queries"], "report": report,
    }


def run_worker(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    row = args.suite.rows_by_name[args.worker]
    result = train_and_evaluate(row, args)
    target = Path(args.work) / f"{file_stem(row.name)}.row.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(target)  # the parent only ever sees a complete row
    return 0


# ---------------------------------------------------------------------- the sweep (parent process)
def finished_names(rows_file: Path) -> set[str]:
    if not rows_file.is_file():
        return set()
    return {json.loads(line)["name"] for line in rows_file.read_text().splitlines() if line.strip()}


def check_init_vocabulary(args: argparse.Namespace) -> None:
    """Refuse to start when a word of the dataset's captions has no row in the recipe's BERT.

    A BERT source whose word table lacks (zeroes) a row that the captions use would train
    on a blank word without any error; every real row of a pretrained table is non-zero.
    """
    from cir_core.train_config import TrainConfig

    init = TrainConfig.from_file(args.config).model
    if not init.qformer_from_bert:
        return
    import torch
    from safetensors import safe_open

    from cir_core.pretrained import bundled_minilm_path
    from cir_core.text import clean_caption, load_tokenizer

    folder = bundled_minilm_path() if init.qformer_from_bert == "minilm" else Path(init.qformer_from_bert)
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        key = next(k for k in weights.keys() if k.removeprefix("bert.") == "embeddings.word_embeddings.weight")
        table = weights.get_tensor(key)
    tokenizer = load_tokenizer()
    captions = {clean_caption(c) for split in ("train", "val", "test")
                for t in args.suite.read_split(args.data, split).triplets for c in (t.caption, *t.caption_variants)}
    used = {i for ids in tokenizer(sorted(captions))["input_ids"] for i in ids}
    used |= set(tokenizer.all_special_ids) & set(range(table.shape[0]))
    blank = sorted(i for i in used if i < table.shape[0] and not torch.any(table[i]))
    if blank:
        words = tokenizer.convert_ids_to_tokens(blank[:10])
        raise SystemExit(f"the word table in {folder} has no row for {len(blank)} caption tokens, e.g. {words}")
    print(f"word table of {folder}: all {len(used)} caption tokens present", flush=True)


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


class Sweep:
    """Runs rows as worker processes, at most `parallel` at a time, until done or the deadline."""

    def __init__(self, rows: list[SweepRow], args: argparse.Namespace, worker_argv: list[str]):
        self.args, self.worker_argv = args, worker_argv
        self.out, self.work = Path(args.out), Path(args.work)
        self.rows_file, self.metrics_file = self.out / "rows.jsonl", self.out / "metrics.jsonl"
        done = finished_names(self.rows_file)
        for name in sorted(done & {row.name for row in rows}):
            print(f"[sweep] {name}: already in {self.rows_file}, not trained again", flush=True)
        self.pending = deque(row for row in rows if row.name not in done)
        self.running: dict[str, tuple[subprocess.Popen, float, Path]] = {}
        self.finished: list[str] = []
        self.failed: list[str] = []
        self.stopped: list[str] = []
        self.start = args.start  # the deadline counts from the start of the command

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def run(self) -> int:
        deadline = self.args.deadline_seconds
        # A stop of the sweep itself (SIGTERM from a time limit, Ctrl-C) stops its rows too.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        try:
            while self.pending or self.running:
                while self.pending and len(self.running) < self.args.parallel and self.elapsed() < deadline:
                    self._launch(self.pending.popleft())
                for name in [n for n, (process, _, _) in self.running.items() if process.poll() is not None]:
                    self._collect(name)
                if self.elapsed() >= deadline:
                    break
                if self.running:
                    time.sleep(self.args.poll_seconds)
        finally:
            self._stop_all()
        skipped = [row.name for row in self.pending]
        print(f"[sweep] {self.elapsed():.0f} s: {len(self.finished)} rows finished, {len(self.failed)} failed "
              f"{self.failed}, {len(self.stopped)} stopped at the deadline {self.stopped}, "
              f"{len(skipped)} not started {skipped}", flush=True)
        if self.failed:
            return 1
        return 3 if self.stopped or skipped else 0

    def _launch(self, row: SweepRow) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        log = self.work / f"{file_stem(row.name)}.log"
        (self.work / f"{file_stem(row.name)}.row.json").unlink(missing_ok=True)
        with open(log, "w") as handle:
            process = subprocess.Popen([sys.executable, __file__, *self.worker_argv, "--worker", row.name],
                                       stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
        self.running[row.name] = (process, time.monotonic(), log)
        print(f"[sweep] {self.elapsed():.0f} s: started {row.name} (pid {process.pid})", flush=True)

    def _collect(self, name: str) -> None:
        process, started, log = self.running.pop(name)
        result_file = self.work / f"{file_stem(name)}.row.json"
        if process.returncode == 0 and result_file.is_file():
            row = json.loads(result_file.read_text())
            with open(self.rows_file, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            self._append_metrics(name)
            self.finished.append(name)
            print(f"[sweep] {self.elapsed():.0f} s: finished {name} in {time.monotonic() - started:.0f} s "
                  f"({row['seconds_per_step']:.3f} s/step, test R@1 {row['report']['recall']['R@1']:.2f})",
                  flush=True)
        else:
            self.failed.append(name)
            tail = log.read_text(errors="replace").splitlines()[-40:] if log.is_file() else []
            print(f"[sweep] {self.elapsed():.0f} s: {name} FAILED (exit {process.returncode}); last lines of "
                  f"its log:\n" + "\n".join(f"    {line}" for line in tail), flush=True)

    def _append_metrics(self, name: str) -> None:
        log = self.work / file_stem(name) / "metrics.jsonl"
        if not log.is_file():
            return
        with open(self.metrics_file, "a") as handle:
            for line in log.read_text().splitlines():
                if line.strip():
                    handle.write(json.dumps({"row": name, **json.loads(line)}) + "\n")

    def _stop_all(self) -> None:
        for process, _, _ in self.running.values():
            if process.poll() is None:
                process.terminate()
        grace = time.monotonic() + self.args.stop_grace_seconds
        for name, (process, _, _) in list(self.running.items()):
            try:
                process.wait(timeout=max(0.0, grace - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.returncode == 0 and (self.work / f"{file_stem(name)}.row.json").is_file():
                self._collect(name)  # it finished before the stop reached it
            else:
                self.running.pop(name)
                self.stopped.append(name)
                print(f"[sweep] {self.elapsed():.0f} s: stopped {name} at the deadline", flush=True)


def check_recipe(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (one line) a recipe that does not read, or trains on another benchmark than the rows are
    evaluated on, and a data folder that is not there."""
    from cir_core.train_config import TrainConfig

    try:
        kind = TrainConfig.from_file(args.config).data.kind
    except ValueError as error:
        parser.error(" ".join(str(error).split()))
    if kind != args.benchmark:
        parser.error(f"the recipe {args.config} trains on {kind}, not {args.benchmark}: give --benchmark {kind} "
                     "or another --config")
    if not args.data.is_dir():
        parser.error(f"--data {args.data} is not a folder")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", choices=sorted(BENCHMARKS), default="shapes",
                        help="what the rows train and are evaluated on")
    parser.add_argument("--data", type=Path, help="the benchmark's folder (default: data/<benchmark>)")
    parser.add_argument("--config", type=Path,
                        help="the recipe every row starts from (default: the benchmark's, in configs/)")
    parser.add_argument("--out", type=Path, required=True, help="folder of rows.jsonl and metrics.jsonl")
    parser.add_argument("--work", type=Path, help="folder of the runs and worker logs (default: OUT/work)")
    parser.add_argument("--rows", default="all", help="comma-separated row names or 'all': "
                        + "; ".join(f"{name}: {', '.join(b.rows_by_name)}" for name, b in BENCHMARKS.items()))
    parser.add_argument("--steps", type=int, default=500, help="training steps of every row")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--parallel", type=int, default=1, help="rows trained at once (one process each)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per row")
    parser.add_argument("--deadline-seconds", type=float, default=float("inf"),
                        help="after this long no row starts and running rows are stopped")
    parser.add_argument("--stop-grace-seconds", type=float, default=20.0, help="wait this long for a stopped row")
    parser.add_argument("--poll-seconds", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--max-test-queries", type=int, default=0,
                        help="evaluate on this many test queries (a fixed choice; 0 = all, as in the results)")
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.suite = BENCHMARKS[args.benchmark]
    args.data = args.data or args.suite.data
    args.config = args.config or args.suite.config
    args.work = args.work or args.out / "work"
    if args.steps < 1 or args.parallel < 1 or args.threads < 1:
        parser.error("--steps, --parallel and --threads must be at least 1")
    check_recipe(parser, args)
    known = args.suite.rows_by_name
    names = list(known) if args.rows == "all" else [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown {args.benchmark} rows {unknown}; choose from {list(known)}")
    args.row_names = names
    # What a worker needs to run exactly as asked: the same options, absolute paths.
    worker_argv = ["--benchmark", args.benchmark, "--data", str(args.data.resolve()),
                   "--config", str(args.config.resolve()),
                   "--out", str(args.out.resolve()), "--work", str(args.work.resolve()), "--steps", str(args.steps),
                   "--device", args.device, "--parallel", str(args.parallel), "--threads", str(args.threads),
                   "--max-test-queries", str(args.max_test_queries), "--eval-batch-size", str(args.eval_batch_size)]
    return args, worker_argv


def main(argv: list[str] | None = None) -> int:
    start = time.monotonic()
    args, worker_argv = parse_args(argv)
    args.start = start
    if args.worker:
        return run_worker(args)
    if code_version()[0] is None:
        raise SystemExit(f"shapes_sweep.py: error: {ROOT} is not a git checkout, and every row records the "
                         "commit it was trained at")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"[sweep] {len(args.row_names)} {args.benchmark} rows x {args.steps} steps on {args.device}, "
          f"{args.parallel} at a time, "
          f"{args.threads} threads each, deadline {args.deadline_seconds} s", flush=True)
    check_init_vocabulary(args)
    rows = [args.suite.rows_by_name[name] for name in args.row_names]
    return Sweep(rows, args, worker_argv).run()


if __name__ == "__main__":
    sys.exit(main())
