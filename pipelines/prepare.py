"""DVC stage `prepare`: build the dataset described by ``params.yaml`` key ``prepare``.

    python -m detlab.pipelines.prepare [--params params.yaml]

    prepare:
      dataset: shapes      # the embedded synthetic dataset (the only generated one)
      seed: 0
      num_train: 512
      num_val: 128
      image_size: 128
      max_objects: 4
      out: data/shapes

The dataset is written to a temporary folder next to ``out`` and renamed into place, so an
interrupted run never leaves a half-written dataset at ``out``. Real data (ImageFolder,
COCO, VOC) is not imported: point ``data.root`` at it and it is read in place.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from detlab.methods.datasets.readers import open_dataset
from detlab.methods.datasets.shapes import ShapesError, generate_shapes

REQUIRED = ("seed", "num_train", "num_val", "image_size", "max_objects", "out")
OPTIONAL = {"dataset": "shapes", "min_objects": 1, "textures": "random"}


class PrepareError(ValueError):
    """Bad ``prepare`` parameters (message names the params file and key)."""


def load_params(path: Path) -> dict:
    try:
        params = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise PrepareError(f"{path}: cannot read params file ({e})") from e
    except yaml.YAMLError as e:
        raise PrepareError(f"{path}: not valid YAML ({e})") from e
    section = (params or {}).get("prepare") if isinstance(params, dict) else None
    if not isinstance(section, dict):
        raise PrepareError(f"{path}: no mapping under key 'prepare'")
    unknown = sorted(set(section) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise PrepareError(
            f"{path}: unknown key(s) prepare.{unknown} (valid: {sorted([*REQUIRED, *OPTIONAL])})"
        )
    section = {**OPTIONAL, **section}
    if section["dataset"] != "shapes":
        raise PrepareError(
            f"{path}: prepare.dataset={section['dataset']!r}: only 'shapes' is generated; real "
            f"data (imagefolder / coco / voc) is read in place: set data.root to its folder"
        )
    missing = [k for k in REQUIRED if k not in section]
    if missing:
        raise PrepareError(f"{path}: missing key(s) {['prepare.' + k for k in missing]}")
    return section


def prepare(params: dict, progress: bool = True) -> tuple[Path, str]:
    """Generate into a sibling temp folder, then swap it in for ``out``. Returns (out, summary)."""
    out = Path(params["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is shared
    old = None
    try:
        generate_shapes(
            tmp,
            seed=params["seed"],
            num_train=params["num_train"],
            num_val=params["num_val"],
            image_size=params["image_size"],
            max_objects=params["max_objects"],
            min_objects=params["min_objects"],
            textures=params["textures"],
            progress=progress,
        )
        fingerprints = {
            s: open_dataset(tmp, s).fingerprint[:12]
            for s in ("train", "val")
            if params[f"num_{s}"] > 0
        }
        if out.exists() or out.is_symlink():
            old = out.parent / f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    summary = (
        f"prepare: shapes seed={params['seed']} train={params['num_train']} "
        f"val={params['num_val']} size={params['image_size']}px "
        f"objects={params['min_objects']}-{params['max_objects']} -> {out} "
        f"(fingerprints {fingerprints}, {time.perf_counter() - start:.1f}s)"
    )
    return out, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m detlab.pipelines.prepare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--params", default="params.yaml", help="params file (key 'prepare')")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        params = load_params(Path(args.params))
        _, summary = prepare(params, progress=not args.no_progress)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ShapesError as e:
        print(f"error: {args.params}: {e}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
