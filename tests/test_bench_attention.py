"""The eager-against-fused attention benchmark, run on the tiny preset: every setting and kind, and the
choice the model makes for each."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

spec = importlib.util.spec_from_file_location("bench_attention",
                                              Path(__file__).parents[1] / "benchmarks" / "bench_attention.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
VOCAB = Path(__file__).parents[1] / "checkpoints" / "shapes-mini" / "vocab.txt"


def test_report_times_both_attentions_per_setting_and_kind_and_names_the_models_choice(capsys):
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--preset", "tiny-test", "--rounds", "2", "--batch", "3", "--vocab", str(VOCAB),
                           "--json"]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(capsys.readouterr().out)
    expected = {f"{precision}, {kind}" for precision in ("fp32", "bf16", "bf16-autocast", "int8")
                for kind in ("query", "reference", "gallery")}
    assert set(report["settings"]) == expected and report["gallery_batch"] == 3 and report["threads"] == 1
    for name, row in report["settings"].items():
        assert row["eager_ms"] > 0 and row["sdpa_ms"] > 0 and row["eager_over_sdpa"] > 0
        assert row["model_uses"] == ("eager" if name.startswith("bf16") else "sdpa")


def test_the_forced_attention_is_the_one_that_runs(monkeypatch):
    from cir_core import attention

    model = bench.build(bench.argparse.Namespace(model=None, preset="tiny-test", vocab=VOCAB), torch.device("cpu"))
    for name in bench.IMPLEMENTATIONS:
        bench.force_attention(model, name)
        seen = []
        monkeypatch.setattr(attention, "fused_is_faster", lambda query: seen.append(query) or True)
        with torch.inference_mode():
            bench.query_work(model, torch.randn(1, 3, 32, 32))
        assert seen == []  # transformers' own implementation ran, not the model's per-call choice
        assert model.qformer.config._attn_implementation == name


@pytest.mark.parametrize("argv, message", [(["--kinds", "query,maps"], "--kinds"),
                                           (["--precisions", "fp16"], "--precisions takes")])
def test_bad_arguments_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--preset", "tiny-test", "--rounds", "1", "--vocab", str(VOCAB), *argv])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_cuda_without_cuda_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--preset", "tiny-test", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
