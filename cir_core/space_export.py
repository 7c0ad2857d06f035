"""A folder that is exactly a Hugging Face Space for the app (`cir space-export`).

The folder holds app.py, the package code it imports (cir_core/ and demo/), requirements.txt,
the model folder, the gallery it serves (and a prebuilt index when given), a README.md whose
front matter Spaces reads, a .gitattributes routing large files through LFS, and
`space_settings.json`: the app's settings, read by app.py as defaults, so the Space serves
what was exported without flags. Paths in the settings are relative to the folder, which is
the working directory a Space runs its app in.

Everything is written into a staging folder beside the destination and renamed into place
at the end (`cir_core.atomic.staged_folder`): an interrupted export leaves no half-written
folder.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cir_core.shipped import DEFAULT_DATASET, SHIPPED, default_model

REPO_ROOT = Path(__file__).resolve().parent.parent
SETTINGS_FILE = "space_settings.json"
LFS_THRESHOLD_BYTES = 10 * 1024 * 1024  # the Hub refuses plain git files over 10 MB
LFS_SUFFIXES = (".safetensors", ".npz", ".npy", ".faiss")
PACKAGES = ("cir_core", "demo")
PACKAGE_DATA = {"cir_core": ("presets/*.json",)}  # as pyproject.toml's package-data: read at import time


class ExportError(Exception):
    """A request that cannot be exported: one line for the user."""


@dataclass(frozen=True)
class SpaceExport:
    """What goes into a Space folder: sources on disk and where they land inside it."""

    model_dir: Path                      # the checkpoint folder, copied to checkpoints/<name>
    title: str
    dataset: str | None = None           # the benchmark served (None for a plain gallery or an index alone)
    data_dir: Path | None = None         # --data-root or --gallery folder, copied to data/<name>
    gallery: bool = False                # data_dir is a plain image folder
    split: str | None = None
    category: str | None = None
    index_dir: Path | None = None        # copied to index/
    shipped_data: tuple[Path, ...] = ()  # repository folders copied to the same relative path (assets/...)
    served: str = ""                     # one sentence for the README body

    @property
    def model_dest(self) -> str:
        return f"checkpoints/{self.model_dir.name}"

    @property
    def data_dest(self) -> str | None:
        return None if self.data_dir is None else f"data/{self.data_dir.name}"

    def settings(self) -> dict[str, str]:
        """The app's environment settings, baked into space_settings.json."""
        values = {"CIR_MODEL": f"local-dir:{self.model_dest}", "CIR_DATASET": self.dataset,
                  "CIR_SPLIT": self.split, "CIR_CATEGORY": self.category,
                  "CIR_INDEX": "index" if self.index_dir is not None else None}
        if self.data_dir is not None:
            values["CIR_GALLERY" if self.gallery else "CIR_DATA_ROOT"] = self.data_dest
        return {name: value for name, value in values.items() if value is not None}


@dataclass
class ExportSummary:
    out: Path
    files: int = 0
    total_bytes: int = 0
    lfs_files: list[str] = field(default_factory=list)

    def line(self, push: str | None = None) -> str:
        repo = push or "USER/NAME"
        publish = f"hf upload {repo} {self.out} --repo-type space"
        where = f"; pushed to https://huggingface.co/spaces/{push}" if push else f"; publish with `{publish}`"
        return (f"wrote {self.out}: {self.files} files, {self.total_bytes / 1e6:.1f} MB, "
                f"{len(self.lfs_files)} through LFS{where}")


def model_folder(uri: str, repo_root: Path = REPO_ROOT) -> Path:
    """The checkpoint folder of a `local-dir:` URI (relative paths from the repository, as the app reads them)."""
    if not uri.startswith("local-dir:"):
        raise ExportError(f"only local-dir: models can be exported, got {uri!r} "
                          "(download it first and give --model local-dir:PATH)")
    folder = Path(uri[len("local-dir:"):]).expanduser()
    if not folder.is_absolute() and not folder.exists():
        folder = repo_root / folder
    if not (folder / "config.json").is_file():
        raise ExportError(f"model folder {folder} is missing (or holds no config.json)")
    return folder


def plan_export(model: str | None = None, dataset: str | None = None, data_root: str | Path | None = None,
                split: str | None = None, category: str | None = None, gallery: str | Path | None = None,
                index: str | Path | None = None, title: str | None = None,
                repo_root: Path = REPO_ROOT) -> SpaceExport:
    """What to export, checked before anything is written (the index's fingerprint included)."""
    if gallery is not None and (dataset is not None or data_root is not None):
        raise ExportError("give either --gallery or --dataset/--data-root, not both")
    shipped_data: tuple[Path, ...] = ()
    data_dir = Path(gallery or data_root) if (gallery or data_root) else None
    if data_dir is not None and not data_dir.is_dir():
        raise ExportError(f"{'--gallery' if gallery else '--data-root'} {data_dir} is not a folder")
    if gallery is None and data_root is None and not (index is not None and dataset is None):
        dataset = dataset or DEFAULT_DATASET
        shipped = SHIPPED.get(dataset)
        if shipped is None:
            raise ExportError(f"--dataset {dataset} needs --data-root (the benchmark's folder)")
        folder = repo_root / shipped.folders[0]
        if not (folder / "info.json").is_file():
            raise ExportError(f"the shipped {dataset} benchmark {folder} is missing: write it with `{shipped.make}`")
        shipped_data = (shipped.folders[0], shipped.examples.parent)
    uri = model or default_model(dataset, gallery)
    model_dir = model_folder(uri, repo_root)
    index_dir = Path(index) if index is not None else None
    if index_dir is not None:
        check_index_fingerprint(index_dir, model_dir)
    served = describe(model_dir.name, dataset, data_dir, gallery is not None, split, category, index_dir)
    return SpaceExport(model_dir=model_dir, title=title or f"SPRC composed image retrieval: {model_dir.name}",
                       dataset=dataset, data_dir=data_dir, gallery=gallery is not None, split=split,
                       category=category, index_dir=index_dir, shipped_data=shipped_data, served=served)


def describe(model_name: str, dataset: str | None, data_dir: Path | None, gallery: bool, split: str | None,
             category: str | None, index_dir: Path | None) -> str:
    if gallery:
        what = f"the image folder `data/{data_dir.name}` (no ground truth)"
    elif dataset is not None:
        where = f"`data/{data_dir.name}`" if data_dir is not None else "the shipped folder in `assets/`"
        what = (f"the {dataset} benchmark ({split or 'default'} split{f', {category}' if category else ''}) "
                f"from {where}")
    else:
        what = "the prebuilt gallery index in `index/`"
    if index_dir is not None and (gallery or dataset is not None):
        what += ", searched through the prebuilt index in `index/`"
    return f"The model `checkpoints/{model_name}` over {what}."


def check_index_fingerprint(index_dir: Path, model_dir: Path) -> None:
    """ExportError unless the index folder records the weights fingerprint of the exported model."""
    try:
        info = json.loads((index_dir / "info.json").read_text())
    except (OSError, ValueError) as error:
        raise ExportError(f"--index {index_dir} is not a gallery index (no readable info.json: {error})") from None
    recorded = info.get("fingerprint") if isinstance(info, dict) else None
    from cir_core.checkpoints import load_model, weights_fingerprint

    fingerprint = weights_fingerprint(load_model(f"local-dir:{model_dir}"))
    if recorded != fingerprint:
        raise ExportError(f"--index {index_dir} was built by other weights (fingerprint {recorded}, "
                          f"the model's {fingerprint}); rebuild it with cir build-index")


def gradio_pin(requirements: str) -> str:
    """The version gradio is pinned to (`gradio==X`) in a requirements file's text."""
    for line in requirements.splitlines():
        match = re.fullmatch(r"\s*gradio\s*==\s*([^\s;#]+).*", line)
        if match:
            return match.group(1)
    raise ExportError("requirements.txt pins no gradio version (gradio==X), which the Space's sdk_version needs")


def readme_text(export: SpaceExport, sdk_version: str, python_version: str | None = None) -> str:
    python_version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    front = {"title": export.title, "sdk": "gradio", "sdk_version": sdk_version,
             "python_version": python_version, "app_file": "app.py", "pinned": False}
    lines = ["---"] + [f"{key}: {json.dumps(value)}" for key, value in front.items()] + ["---", ""]
    body = [f"# {export.title}", "",
            "Composed image retrieval with SPRC: give a reference image and a caption describing a change "
            "(\"make it red\"), get the gallery ranked.", "",
            export.served, "",
            f"The app's settings are in `{SETTINGS_FILE}`; the environment variables of the same names "
            "(CIR_MODEL, CIR_DATASET, ...) override them.", ""]
    return "\n".join(lines + body)


def lfs_patterns(files: Iterable[tuple[str, int]], threshold: int = LFS_THRESHOLD_BYTES) -> list[str]:
    """The .gitattributes lines for (relative path, size) pairs: the usual binary patterns, plus an
    exact path for any other file over `threshold`."""
    lines = [f"*{suffix} filter=lfs diff=lfs merge=lfs -text" for suffix in LFS_SUFFIXES]
    for path, size in sorted(files):
        if size > threshold and not path.endswith(LFS_SUFFIXES):
            escaped = path.replace(" ", "[[:space:]]")  # gitattributes splits patterns at spaces
            lines.append(f"{escaped} filter=lfs diff=lfs merge=lfs -text")
    return lines


def through_lfs(path: str, size: int, threshold: int = LFS_THRESHOLD_BYTES) -> bool:
    return path.endswith(LFS_SUFFIXES) or size > threshold


def _ignore_caches(folder: str, names: list[str]) -> set[str]:
    return {name for name in names if name == "__pycache__" or name.endswith((".pyc", ".pyo"))}


def copy_code(repo_root: Path, dest: Path) -> None:
    """app.py, the Python files of the packages it imports and their package data; nothing else."""
    shutil.copy2(repo_root / "app.py", dest / "app.py")
    shutil.copy2(repo_root / "requirements.txt", dest / "requirements.txt")
    for package in PACKAGES:
        for pattern in ("**/*.py",) + PACKAGE_DATA.get(package, ()):
            for path in sorted((repo_root / package).glob(pattern)):
                if "__pycache__" in path.parts or not path.is_file():
                    continue
                target = dest / path.relative_to(repo_root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


def write_space(export: SpaceExport, staging: Path, repo_root: Path = REPO_ROOT) -> None:
    """Fill an empty folder with the Space."""
    copy_code(repo_root, staging)
    shutil.copytree(export.model_dir, staging / export.model_dest, ignore=_ignore_caches)
    if export.data_dir is not None:
        shutil.copytree(export.data_dir, staging / export.data_dest, ignore=_ignore_caches)
    for relative in export.shipped_data:
        if (repo_root / relative).is_dir():
            shutil.copytree(repo_root / relative, staging / relative, ignore=_ignore_caches)
    if export.index_dir is not None:
        shutil.copytree(export.index_dir, staging / "index", ignore=_ignore_caches)
    (staging / SETTINGS_FILE).write_text(json.dumps(export.settings(), indent=2) + "\n")
    sdk_version = gradio_pin((repo_root / "requirements.txt").read_text())
    (staging / "README.md").write_text(readme_text(export, sdk_version))
    files = [(path.relative_to(staging).as_posix(), path.stat().st_size) for path in staging.rglob("*") if path.is_file()]
    (staging / ".gitattributes").write_text("\n".join(lfs_patterns(files)) + "\n")


def summarize(out: Path) -> ExportSummary:
    summary = ExportSummary(out=out)
    for path in sorted(out.rglob("*")):
        if path.is_file():
            size = path.stat().st_size
            summary.files += 1
            summary.total_bytes += size
            relative = path.relative_to(out).as_posix()
            if through_lfs(relative, size):
                summary.lfs_files.append(relative)
    return summary


def export_space(export: SpaceExport, out: str | Path, repo_root: Path = REPO_ROOT) -> ExportSummary:
    """Write the Space folder `out` (absent or empty), atomically."""
    from cir_core.atomic import staged_folder

    out = Path(out)
    check_out(out)
    with staged_folder(out) as staging:
        write_space(export, staging, repo_root)
    return summarize(out)


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not empty; choose another folder")


def push_space(out: Path, repo_id: str) -> None:
    """Create the Space (gradio SDK) when absent and upload the folder to it."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", exist_ok=True)
    api.upload_folder(folder_path=str(out), repo_id=repo_id, repo_type="space")
