"""The full-size benchmark script, run with the tiny preset: its report has every field, both settings side by side."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

spec = importlib.util.spec_from_file_location("bench_real_size",
                                              Path(__file__).parents[1] / "benchmarks" / "bench_real_size.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_report_has_the_targets_fields_and_both_settings(capsys):
    threads = torch.get_num_threads()
    try:
        vocab = Path(__file__).parents[1] / "checkpoints" / "shapes-mini" / "vocab.txt"
        assert bench.main(["--preset", "tiny-test", "--device", "cpu", "--gallery", "6", "--queries", "2",
                           "--threads", "1", "--bf16", "--vocab", str(vocab), "--json"]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(capsys.readouterr().out)
    for field in ("gallery_reference_p50_ms", "upload_p50_ms", "peak_rss_gb", "encode_images_per_s"):
        assert report[field] > 0
    assert report["attention"] == "sdpa"  # fp32 attention (int8 layers give fp32) on a CPU runs fused
    assert report["encode_batch"] == 4 and report["read_workers"] == 1
    # the 6 stand-in images in the encoding's time (rounded to 0.1 s)
    assert abs(6 / report["encode_images_per_s"] - report["stand_in_gallery_encoding_s"]) <= 0.05 + 1e-6
    assert report["fast_setting"] == "int8" and set(report["settings"]) == {"fp32", "int8", "bf16"}
    assert set(report["bf16_speedup_over_fp32"]) == {"upload", "gallery_reference"}
    assert "spearman" in report["bf16_ranking_agreement_with_fp32"]["gallery_reference"]
    upload = report["settings"]["int8"]["upload"]["stages_p50_ms"]
    assert set(upload) == {"vision_encoder_ms", "prompt_pass_ms", "compose_pass_ms", "scoring_ms"}
    assert "vision_encoder_ms" not in report["settings"]["int8"]["gallery_reference"]["stages_p50_ms"]
    assert report["gallery_reference_p50_ms"] == report["settings"]["int8"]["gallery_reference"]["p50_ms"]
    agreement = report["ranking_agreement_with_fp32"]["upload"]
    assert 0 <= agreement["same_top1"] <= 1 and -1 <= agreement["spearman"] <= 1 and "top3_overlap" in agreement
    assert set(report["speedup_over_fp32"]) == {"upload", "gallery_reference"}
    assert set(report["targets_met"]) == {"gallery_reference_p50_ms", "upload_p50_ms", "peak_rss_gb"}


def test_random_weights_are_filled_without_layer_initialisation():
    model = bench.random_model("tiny-test", torch.device("cpu"))
    norm = model.vision_model.post_layernorm
    assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and not norm.bias.any()
    weight = model.vision_model.encoder.layers[0].mlp.fc1.weight
    assert abs(weight.std().item() - 0.02) < 0.005 and torch.isfinite(weight).all()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_cuda_without_cuda_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--preset", "tiny-test", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_bad_encode_batch_sizes_are_one_clear_error(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--preset", "tiny-test", "--device", "cpu", "--encode-batch-sizes", "64,x"])
    assert "--encode-batch-sizes takes comma-separated positive integers, got '64,x'" in capsys.readouterr().err
