"""Pretrained ResNet weights from other codebases -> torchvision-named state dicts.

Every reader loads without running pickled code: DetCon's ``.npy`` (a pickled dict of
arrays) through an unpickler that admits only numpy arrays and dtypes, ``.pth``/``.ckpt``
files through ``torch.load(weights_only=True)`` (plus ``argparse.Namespace``, which SoCo
stores its options in and which only holds values). Keys are matched by structure; a key
of the chosen encoder that matches nothing is an error that lists it, never a silent drop.

Formats: ``detcon`` (google-deepmind/detcon, Haiku names, HWIO kernels), ``soco``
(``model``: ``module.encoder.*``), ``solo_learn`` (``state_dict``: ``backbone.*`` or the older
``encoder.*``), ``lightly`` and ``mmselfsup`` (``state_dict``: ``backbone.*``, lightly's also as
``nn.Sequential`` indices), ``mocov2`` (``state_dict``: ``module.encoder_q.*``; its MLP ``fc``
dropped), ``torchvision`` (a plain state dict).
"""

from __future__ import annotations

import argparse
import io
import pickle
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from detlab.methods.weights.resnet import WeightsError

# ------------------------------------------------------------------ safe readers

_NUMPY_GLOBALS = {
    (m, n)
    for m in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
              "numpy._core.numeric", "numpy")
    for n in ("_reconstruct", "scalar", "ndarray", "dtype", "_frombuffer")
} | {("collections", "OrderedDict")}  # fmt: skip


class _ArraysOnly(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise WeightsError(
            f"{self.path}: refusing to unpickle {module}.{name}: a weights file holds only "
            "arrays and dicts, and unpickling anything else could run code"
        )


def read_npy_dict(path: Path) -> dict:
    """The dict pickled in a ``.npy`` file (``np.save(f, dict)``), without running code."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}.get(version)  # fmt: skip
            if read is None:
                raise WeightsError(f"{path}: .npy format version {version} is not supported")
            shape, _, dtype = read(f)
            if not dtype.hasobject or shape != ():
                raise WeightsError(f"{path}: holds a {dtype} array of shape {shape}, not a dict")
            obj = _ArraysOnly(io.BytesIO(f.read()), path).load()
        except (ValueError, EOFError, pickle.UnpicklingError) as exc:
            if isinstance(exc, WeightsError):
                raise
            raise WeightsError(f"{path}: not a readable .npy file ({exc})") from exc
    value = obj.item() if isinstance(obj, np.ndarray) else obj
    if not isinstance(value, dict):
        raise WeightsError(f"{path}: holds a {type(value).__name__}, not a dict of arrays")
    return value


def torch_load_safe(path: Path, error: type[Exception], allowed: tuple = ()) -> object:
    """``torch.load(weights_only=True)`` (plus the ``allowed`` globals). A file whose pickle
    asks for any other global raises ``error`` naming it, before anything of it is built;
    an unreadable file raises ``error`` with torch's reason."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = found.group(1) if found else "an object that is not a tensor or plain type"
        raise error(
            f"refusing to load {path}: it needs {what}, and unpickling it could run code; if "
            "you trust its source, re-save just its tensors and plain values (a state dict) "
            "and load that"
        ) from None
    except Exception as exc:  # torch raises many types for a truncated/corrupt file
        raise error(f"cannot read {path}: {exc}") from exc


def read_torch(path: Path) -> dict:
    """A ``torch.save``-d dict (SoCo keeps its options in an ``argparse.Namespace``)."""
    obj = torch_load_safe(path, WeightsError, allowed=(argparse.Namespace,))
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a dict")
    return obj


# ------------------------------------------------------------------ Haiku (DetCon)

_HAIKU = re.compile(
    r"^(?:block_group_(?P<g>\d+)/~/block_(?P<b>\d+)/~/)?"
    r"(?P<mod>initial_conv|initial_batchnorm|conv_\d+|batchnorm_\d+|shortcut_conv|"
    r"shortcut_batchnorm)(?:/~/(?P<ema>mean_ema|var_ema))?$"
)
_ROOT = re.compile(r"(initial_conv|initial_batchnorm|block_group_\d+)")


def _modules(tree: dict, path: str = "") -> dict[str, dict]:
    """module path -> {name: array}, however deeply the file nests its dicts."""
    out = {}
    for key, value in tree.items():
        here = f"{path}/{key}" if path else str(key)
        if (
            isinstance(value, dict)
            and value
            and all(isinstance(v, np.ndarray | np.generic | int | float) for v in value.values())
        ):
            out[here] = value
        elif isinstance(value, dict):
            out.update(_modules(value, here))
    return out


def _torch_name(match: re.Match) -> str:
    mod = match["mod"]
    stem = {"initial_conv": "conv1", "initial_batchnorm": "bn1"}
    if mod in stem:
        return stem[mod]
    block = f"layer{int(match['g']) + 1}.{int(match['b'])}."
    if mod.startswith("shortcut"):
        return block + ("downsample.0" if mod.endswith("conv") else "downsample.1")
    kind, i = mod.rsplit("_", 1)
    return block + ("conv" if kind == "conv" else "bn") + str(int(i) + 1)


def from_haiku(tree: dict, keep_head: bool = False, encoder: str | None = None):
    """DetCon's Haiku weights -> (torchvision state dict, dropped module paths)."""
    modules = _modules(tree)
    roots = {p[: m.start()] for p in modules if (m := _ROOT.search(p))}
    if not roots:
        raise WeightsError("no ResNet found (no initial_conv / block_group_* modules)")
    pick = encoder or ("online" if any("online" in r for r in roots) else "")
    chosen = {r for r in roots if pick in r}
    if not chosen:
        raise WeightsError(f"encoder={encoder!r} matches none of the networks {sorted(roots)}")
    state: dict[str, Tensor] = {}
    unmatched, dropped = [], []
    for path, arrays in sorted(modules.items()):
        root = next((r for r in chosen if path.startswith(r) and _ROOT.match(path, len(r))), None)
        if root is None:
            head = path.rsplit("/", 1)[-1] == "classifier" and "w" in arrays
            if head and keep_head:
                state["fc.weight"] = torch.from_numpy(np.asarray(arrays["w"]).T.copy())
                state["fc.bias"] = torch.from_numpy(np.asarray(arrays["b"]).copy())
            else:
                dropped.append(path)
            continue
        match = _HAIKU.match(path[len(root) :])
        if match is None:
            unmatched.append(path)
            continue
        name = _torch_name(match)
        for key, value in arrays.items():
            value = torch.from_numpy(np.array(value, dtype=np.float32))
            if match["ema"]:
                if key != "average":
                    continue  # the EMA's hidden state and counter
                target = f"{name}.running_{'mean' if match['ema'] == 'mean_ema' else 'var'}"
            elif key == "w":
                if value.ndim != 4:
                    unmatched.append(f"{path}/{key}")
                    continue
                target = f"{name}.weight"
                value = value.permute(3, 2, 0, 1)  # HWIO -> OIHW
            elif key in ("scale", "offset"):
                target = f"{name}.{'weight' if key == 'scale' else 'bias'}"
            else:
                unmatched.append(f"{path}/{key}")
                continue
            if target in state:
                raise WeightsError(
                    f"several networks in the file: {sorted(roots)}; choose one with "
                    "encoder=<part of its prefix>" if len(chosen) > 1 else
                    f"{path}/{key}: a second value for {target}"
                )  # fmt: skip
            state[target] = value.contiguous() if key == "w" else value.reshape(-1)
    if unmatched:
        raise WeightsError(f"unmatched keys in the encoder: {unmatched}")
    return state, dropped


# ------------------------------------------------------------------ PyTorch codebases

_SEQUENTIAL = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3",
               "7": "layer4"}  # fmt: skip  # torchvision ResNet's children, in order
FORMATS_TORCH = {  # format -> (container keys to try, prefixes to try, fc kept if asked)
    "soco": (("model",), ("module.encoder.", "encoder."), False),
    "solo_learn": (("state_dict",), ("backbone.", "encoder."), False),
    "lightly": (("state_dict",), ("backbone.", "model.backbone."), False),
    "mmselfsup": (("state_dict",), ("backbone.",), False),
    "mocov2": (("state_dict",), ("module.encoder_q.", "encoder_q."), False),
    "torchvision": (("state_dict", "model"), ("",), True),
}


def from_torch(fmt: str, obj: dict, keep_head: bool = False, prefix: str | None = None):
    """A PyTorch checkpoint -> (torchvision state dict, dropped key groups)."""
    containers, prefixes, head_ok = FORMATS_TORCH[fmt]
    sd = next((obj[c] for c in containers if isinstance(obj.get(c), dict)), obj)
    tensors = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    options = [prefix] if prefix is not None else list(prefixes)
    chosen = next((p for p in options if any(k.startswith(p + "conv1.") or
                                             k.startswith(p + "0.") for k in tensors)), None)  # fmt: skip
    if chosen is None:
        groups = sorted({k.split(".")[0] for k in tensors})[:12]
        raise WeightsError(f"{fmt}: no ResNet under {options} (top-level keys: {groups})")
    state, dropped = {}, Counter()
    for key, value in tensors.items():
        if not key.startswith(chosen):
            dropped[key.split(".")[0]] += 1
            continue
        name = key[len(chosen) :]
        first, _, rest = name.partition(".")
        if first in _SEQUENTIAL:
            name = f"{_SEQUENTIAL[first]}.{rest}"
        kept_head = keep_head and head_ok and name in ("fc.weight", "fc.bias")
        if name.startswith("fc.") and not kept_head:
            dropped["fc"] += 1
            continue
        state[name] = value.detach().float() if value.is_floating_point() else value
    return state, [f"{g} ({n} tensors)" for g, n in sorted(dropped.items())]
