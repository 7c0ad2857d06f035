"""Where a model runs: device choice (`auto`, `cpu`, `cuda`), GPU precision, a one-line description.

On a GPU the model runs as the official LAVIS code runs BLIP-2: the weights of linear and
convolution layers in fp16 (half the memory, tensor-core speed), everything under fp16
autocast, so layer norms, softmax and the residual stream are computed in fp32. On a CPU
it stays fp32; faster CPU encodings are `cir_core.precision`'s business.
"""
from __future__ import annotations

import faiss
import torch
from threadpoolctl import threadpool_limits
from torch import nn

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(ValueError):
    """A device that cannot be used; the message says why in one line."""


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None) is CUDA when available, else the CPU; "cuda" without CUDA is refused."""
    name = "auto" if name is None else str(name)
    if name not in DEVICES and not name.startswith("cuda:"):
        raise DeviceError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} was asked for, but this torch ({torch.__version__}) sees no CUDA device; "
                          "use --device cpu or auto")
    return torch.device(name)


def place_model(model, device: str | torch.device | None = "auto"):
    """Move `model` (an SPRCModel, in place) to `device`; on CUDA, fp16 weights as described above.

    The weights fingerprint is taken before the weights are halved and kept with the model,
    so an index built on a GPU is accepted on a CPU and the other way round.
    """
    from cir_core.checkpoints import weights_fingerprint

    device = resolve_device(device)
    if device.type != "cuda":
        return model.to(device)
    if model.autocast_dtype is None:
        model.source_fingerprint = weights_fingerprint(model)
    return halve_weights(model.to(device))


def halve_weights(model, dtype: torch.dtype = torch.float16):
    """Linear and convolution weights in `dtype` and the model computing under autocast in it (in place).

    Those layers hold nearly all the weights; layer norms, embeddings and the learned query
    tokens stay fp32, as LAVIS's `convert_weights_to_fp16` leaves them.
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.to(dtype)
    model.autocast_dtype = dtype
    return model


def describe_placement(model) -> str:
    """Where and how the model computes, e.g. "on CUDA (NVIDIA H200), fp16" or "on CPU, 2 threads"."""
    device = model.device
    if device.type == "cuda":
        precision = "fp16" if model.autocast_dtype == torch.float16 else "fp32"
        return f"on CUDA ({torch.cuda.get_device_name(device)}), {precision}"
    threads = torch.get_num_threads()
    return f"on {device.type.upper()}, {threads} thread{'s' if threads != 1 else ''}"


def limit_threads(count: int = 1) -> None:
    """Cap torch, faiss and BLAS/OpenMP threads of this process (a process-wide setting).

    A server gets its parallelism from concurrent requests; threads inside each request
    oversubscribe a small CPU, worst when it is shared (docs/performance.md, "Threads per
    request", has the measurements). torch and faiss share one OpenMP runtime here, so
    they cannot be set apart.
    """
    count = max(1, int(count))
    torch.set_num_threads(count)
    faiss.omp_set_num_threads(count)
    threadpool_limits(limits=count)
