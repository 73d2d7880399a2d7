"""Device names: "auto", "cpu", "cuda" or "cuda:N" checked once, with one message for every command."""
from __future__ import annotations

import re

import torch

from common.errors import InputError

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch device for a name; "auto" is CUDA when available, else the CPU.

    InputError for an unknown name, or for CUDA asked for where none is available.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str) or not DEVICE_PATTERN.fullmatch(name):
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for, but no CUDA device is available (use cpu or auto)")
    return torch.device(name)
