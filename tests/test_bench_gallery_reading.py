"""The reader-thread benchmark: every reader count timed over the same images, with its ratio to the first."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

spec = importlib.util.spec_from_file_location("bench_gallery_reading",
                                              Path(__file__).parents[1] / "benchmarks" / "bench_gallery_reading.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
VOCAB = Path(__file__).parents[1] / "checkpoints" / "shapes-mini" / "vocab.txt"


def test_report_times_each_reader_count_over_the_same_images(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--preset", "tiny-test", "--vocab", str(VOCAB), "--device", "cpu", "--count", "6",
                           "--batch", "4", "--workers", "1,3", "--rounds", "2", "--json"]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == 6 and report["threads"] == 1 and report["precision"] in ("fp32", "bf16")
    assert set(report["images_per_s"]) == {"1", "3"} and all(rate > 0 for rate in report["images_per_s"].values())
    assert all(len(rates) == 2 for rates in report["per_round_images_per_s"].values())
    ones, threes = report["per_round_images_per_s"]["1"], report["per_round_images_per_s"]["3"]
    expected = sorted(b / a for a, b in zip(ones, threes))
    assert report["ratio_to_1_reader"]["3"] == pytest.approx((expected[0] + expected[1]) / 2, rel=0.02)


def test_an_image_folder_is_read_with_its_unreadable_files(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for number in range(3):
        Image.new("RGB", (40, 30), (number * 80, 0, 0)).save(folder / f"im{number}.png")
    (folder / "notes.txt").write_text("not an image")
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--preset", "tiny-test", "--vocab", str(VOCAB), "--device", "cpu", "--images",
                           str(folder), "--workers", "2", "--rounds", "1", "--json"]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == 4 and report["images_per_s"]["2"] > 0 and report["ratio_to_2_reader"] == {}


@pytest.mark.parametrize("flags, message", [
    (["--workers", "1,x"], "--workers takes distinct comma-separated positive integers, got '1,x'"),
    (["--workers", "2,2"], "--workers takes distinct"),
    (["--count", "0"], "--count, --rounds and --batch must be at least 1"),
])
def test_bad_flags_are_one_clear_error(flags, message, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", *flags])
    assert message in capsys.readouterr().err


def test_a_missing_folder_is_one_line(tmp_path, capsys):
    assert bench.main(["--preset", "tiny-test", "--vocab", str(VOCAB), "--device", "cpu",
                       "--images", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "does not exist" in err and len(err.strip().splitlines()) == 1
