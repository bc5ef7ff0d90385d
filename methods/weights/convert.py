"""``detlab import-weights format=<fmt> src=<file> out=<file.pt>``: write a torchvision-named
ResNet state dict (every tensor, strict-loadable) and ``<out>.json`` (source, architecture,
what was dropped, how to load it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from detlab.methods.weights.formats import (
    FORMATS_TORCH,
    from_haiku,
    from_torch,
    read_npy_dict,
    read_torch,
)
from detlab.methods.weights.resnet import WeightsError, build_resnet, describe

FORMATS = ("detcon", *FORMATS_TORCH)
KEYS = {"format", "src", "out", "keep_head", "encoder"}
TORCHVISION_ARCHS = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}
STANDARD_WIDTHS = {"basic": [64, 128, 256, 512], "bottleneck": [256, 512, 1024, 2048]}


def convert(
    fmt: str, src: Path, out: Path, keep_head: bool = False, encoder: str | None = None
) -> dict:
    """Convert ``src`` (format ``fmt``) to ``out``; returns the info written beside it."""
    if fmt not in FORMATS:
        raise WeightsError(f"format={fmt!r} is not one of {list(FORMATS)}")
    src = Path(src)
    if not src.is_file():
        raise WeightsError(f"src={src} does not exist")
    if fmt == "detcon":
        state, dropped = from_haiku(read_npy_dict(src), keep_head, encoder)
    else:
        state, dropped = from_torch(fmt, read_torch(src), keep_head, encoder)
    model = build_resnet(state)  # every tensor placed, or an error naming the misfits
    arch = describe(state)
    full = model.state_dict()  # adds BN counters a source may not store
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(full, out)
    info = {
        "format": fmt,
        "source": str(src.resolve()),
        **arch,
        "tensors": len(full),
        "dropped": dropped,
        "padding": "tf_same" if fmt == "detcon" else "torchvision",
        "load": loading_code(out, arch, fmt),
    }
    Path(f"{out}.json").write_text(json.dumps(info, indent=2, default=list) + "\n")
    return info


def loading_code(out: Path, arch: dict, fmt: str) -> str:
    """Python lines that build the model and load ``out`` into it."""
    standard = (arch["arch"] in TORCHVISION_ARCHS and arch["stem"] == "imagenet"
                and arch["widths"] == STANDARD_WIDTHS[arch["block"]] and arch["stem_width"] == 64)  # fmt: skip
    if standard and (arch["fc"] is None or arch["fc"][0] == 1000):
        lines = ["import torch, torchvision", f"model = torchvision.models.{arch['arch']}()"]
        if arch["fc"] is None:
            lines.append("model.fc = torch.nn.Identity()")
        lines.append(f"model.load_state_dict(torch.load({str(out)!r}, weights_only=True))")
    else:
        lines = ["import torch", "from detlab.methods.weights import build_resnet",
                 f"model = build_resnet(torch.load({str(out)!r}, weights_only=True))"]  # fmt: skip
    if fmt == "detcon":
        lines += ["from detlab.methods.weights import tf_same",
                  "model = tf_same(model)  # Haiku's SAME padding: the original forward"]  # fmt: skip
    return "\n".join(lines)


def import_weights_command(args: list[str]) -> int:
    """The CLI: key=value arguments (format, src, out; keep_head=true, encoder=<prefix>)."""
    given = dict(a.split("=", 1) for a in args if "=" in a)
    bad = [a for a in args if "=" not in a] + sorted(set(given) - KEYS)
    missing = sorted({"format", "src", "out"} - set(given))
    if bad or missing:
        what = f"unknown argument(s) {bad}" if bad else f"missing {', '.join(missing)}"
        print(f"detlab import-weights: {what}; usage: detlab import-weights "
              f"format=<{'|'.join(FORMATS)}> src=<file> out=<file.pt> [keep_head=true] "
              "[encoder=<prefix>]", file=sys.stderr)  # fmt: skip
        return 2
    try:
        info = convert(given["format"], Path(given["src"]), Path(given["out"]),
                       given.get("keep_head", "false").lower() in ("1", "true", "yes"),
                       given.get("encoder"))  # fmt: skip
    except WeightsError as exc:
        print(f"detlab import-weights: {exc}", file=sys.stderr)
        return 2
    print(f"{info['arch']} ({info['block']}, blocks {info['layers']}, widths {info['widths']}, "
          f"{info['stem']} stem): {info['tensors']} tensors -> {given['out']}")  # fmt: skip
    if info["dropped"]:
        print(f"dropped: {', '.join(info['dropped'][:10])}"
              f"{' ...' if len(info['dropped']) > 10 else ''}")  # fmt: skip
    print(f"load it with:\n{info['load']}")
    return 0
