"""Where a result came from: the code's commit, the device, and (cir_core.data.folders) the data.

Training runs, shipped checkpoints and experiment rows record these themselves, so that a
figure can always be traced to the code and data that produced it.
"""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def code_version(checkout: Path = CHECKOUT) -> tuple[str | None, bool | None]:
    """The checkout's commit and whether its tracked files differ from it (None, None outside git)."""
    def git(*command: str) -> str:
        return subprocess.run(["git", *command], cwd=checkout, capture_output=True, text=True, check=True,
                              timeout=30).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def describe_device(device) -> str:
    """The accelerator's name, or the CPU's architecture and the threads torch uses (`device`: a
    torch.device or its name)."""
    import torch  # only here: experiment drivers read the commit before they set torch's threads

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
