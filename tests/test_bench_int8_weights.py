"""The int8 weight-scale benchmark runs on a saved model and reports every setting."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import cir_core

spec = importlib.util.spec_from_file_location("bench_int8_weights",
                                              Path(__file__).parents[1] / "benchmarks" / "bench_int8_weights.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_benchmark_times_three_settings_side_by_side(tiny_model, tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        saved = cir_core.save_model(tiny_model, tmp_path / "tiny")
        assert bench.main(["--model", f"local-dir:{saved}", "--queries", "5"]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(capsys.readouterr().out)
    assert set(report["p50_ms"]) == {"fp32", "int8, one scale per matrix", "int8, one scale per row (used)"}
    assert all(value > 0 for value in report["p50_ms"].values()) and report["per_row_over_per_matrix"] > 0


def test_too_few_queries_are_refused():
    with pytest.raises(SystemExit):
        bench.main(["--queries", "2"])


def test_a_missing_model_is_a_clear_error(tmp_path, capsys):
    assert bench.main(["--model", f"local-dir:{tmp_path / 'none'}", "--queries", "5"]) == 2
    assert "error:" in capsys.readouterr().err
