"""Locator checkpoints: plain dicts of tensors and primitives, loadable with weights_only=True.

Layout (``FORMAT_VERSION`` 1)::

    {"format": "legalign-locator", "format_version": 1, "legalign_version": "0.1.0",
     "landmark_names": [...12 names...], "spec": LocatorSpec.to_dict(),
     "config": {...training config...}, "coarse": state_dict, "fine": state_dict,
     "train_state": {...}  # optional: optimiser, step, RNG, for --resume
    }
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from legalign.models.heatmap_net import build_model
from legalign.models.spec import LocatorSpec, NetSpec
from legalign.pipeline import __version__
from legalign.pipeline.errors import InputError
from legalign.pipeline.landmarks import LANDMARK_NAMES

FORMAT = "legalign-locator"
FORMAT_VERSION = 1
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "legalign_default.pt"


def build_net(net: NetSpec, num_outputs: int, pretrained: bool = False) -> nn.Module:

    return build_model(
        net.arch,
        num_outputs,
        depth=net.depth,
        out_stride=net.out_stride,
        head_channels=net.head_channels,
        pretrained=pretrained,
    )


def build_nets(spec: LocatorSpec, pretrained: bool = False) -> tuple[nn.Module, nn.Module]:
    coarse = build_net(spec.coarse_net, len(spec.coarse_landmarks), pretrained)
    fine = build_net(spec.fine_net, len(spec.fine_landmarks), pretrained)
    return coarse, fine


def make_checkpoint(
    spec: LocatorSpec,
    coarse: nn.Module,
    fine: nn.Module,
    config: dict | None = None,
    train_state: dict | None = None,
    half: bool = False,
) -> dict[str, Any]:

    def sd(m: nn.Module) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in m.state_dict().items():
            v = v.detach().cpu().clone()
            if half and v.is_floating_point():
                v = v.half()
            out[k] = v
        return out

    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "legalign_version": __version__,
        "landmark_names": list(LANDMARK_NAMES),
        "spec": spec.to_dict(),
        "config": config or {},
        "coarse": sd(coarse),
        "fine": sd(fine),
    }
    if train_state is not None:
        ckpt["train_state"] = train_state
    return ckpt


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path | None = None) -> dict[str, Any]:
    """Load and check a checkpoint (``None``: the shipped default)."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(
            f"{path}: not a loadable legalign checkpoint ({exc.__class__.__name__})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{path}: not a legalign locator checkpoint")
    if int(ckpt.get("format_version", -1)) > FORMAT_VERSION:
        raise InputError(
            f"{path}: checkpoint format {ckpt.get('format_version')} is newer than this "
            f"legalign understands ({FORMAT_VERSION})"
        )
    if list(ckpt.get("landmark_names", [])) != list(LANDMARK_NAMES):
        raise InputError(f"{path}: checkpoint landmark names differ from this legalign's")
    return ckpt


def shipped_copy(ckpt: dict[str, Any], half: bool = True) -> dict[str, Any]:
    """A checkpoint as the package ships it: no training state, float16 weights."""
    out = {k: v for k, v in ckpt.items() if k != "train_state"}
    for net in ("coarse", "fine"):
        out[net] = {
            k: v.half() if half and v.is_floating_point() else v for k, v in ckpt[net].items()
        }
    return out


def development_checkout() -> Path | None:
    """The repository root when this package runs from a development checkout (an
    editable install of a git clone), None when it is installed (e.g. from a wheel)."""
    root = WEIGHTS_DIR.parent.parent
    if (root / "pyproject.toml").is_file() and (root / ".git").exists():
        return root
    return None


def install_as_default(path: str | Path) -> Path:
    """Make the checkpoint at ``path`` the shipped default model
    (``models/weights/legalign_default.pt``): the explicit step that replaces it, in a
    development checkout only (never inside an installed package)."""
    if development_checkout() is None:
        raise InputError(
            f"{path}: --as-default replaces the shipped model in a development checkout "
            f"only; this legalign is installed at {WEIGHTS_DIR.parent.parent}"
        )
    ckpt = load_checkpoint(path)
    save_checkpoint(shipped_copy(ckpt), DEFAULT_WEIGHTS)
    return DEFAULT_WEIGHTS


def nets_from_checkpoint(ckpt: dict[str, Any]) -> tuple[LocatorSpec, nn.Module, nn.Module]:
    spec = LocatorSpec.from_dict(ckpt["spec"])
    coarse, fine = build_nets(spec)
    coarse.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in ckpt["coarse"].items()}
    )
    fine.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in ckpt["fine"].items()}
    )
    coarse.eval()
    fine.eval()
    return spec, coarse, fine
