import json

import pytest

from cir_core.cli import main as cli_main
from cir_core.data.shapes import ShapesCounts, read_shapes_split, write_shapes_dataset


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes-export") / "data"
    write_shapes_dataset(out, seed=3, image_size=32, counts=ShapesCounts(train=16, val=8, test=12),
                         progress=False, workers=1)
    return out


def test_exported_split_reads_like_the_original(shapes_dir, tmp_path, capsys):
    out = tmp_path / "assets"
    assert cli_main(["data", "export-split", "--data", str(shapes_dir), "--split", "test", "--out", str(out)]) == 0
    assert "12 queries" in capsys.readouterr().out
    original, exported = read_shapes_split(shapes_dir, "test"), read_shapes_split(out, "test")
    assert [t.pairid for t in exported.triplets] == [t.pairid for t in original.triplets]
    assert exported.gallery == original.gallery
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{i}.png" for i in original.gallery)
    assert (out / "images" / f"{original.gallery[0]}.png").read_bytes() == original.path(original.gallery[0]).read_bytes()
    info = json.loads((out / "info.json").read_text())
    assert list(info["splits"]) == ["test"]
    with pytest.raises(ValueError, match="no shapes split 'train'"):
        read_shapes_split(out, "train")


def test_export_refuses_to_clobber_and_unknown_split(shapes_dir, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        from cir_core.data.shapes import export_split

        export_split(shapes_dir, "test", occupied)
    assert (occupied / "notes.txt").read_text() == "keep me"
    assert cli_main(["data", "export-split", "--data", str(shapes_dir), "--split", "nope",
                     "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
