"""Up-front checks of a split's files: every image exists and decodes, sizes agree with the
annotations, per-pixel annotations exist and match their image. Runs before any compute so
bad input is reported with its path, not as a stack trace from inside a DataLoader worker.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from detlab.methods.datasets.records import DatasetError, Entry, ImageRecord, Source

MAX_LISTED = 10  # problems spelled out in one DatasetError
PARALLEL_FROM = 256  # entries; header reads use threads above this (I/O bound)
PROGRESS_FROM = 5000  # entries; show a progress bar above this


def _header(path: Path, full_decode: bool) -> tuple[tuple[int, int, str] | None, str | None]:
    """((height, width, mode), None) or (None, problem)."""
    if not path.is_file():
        return None, "file is missing"
    try:
        with Image.open(path) as im:
            width, height = im.size
            mode = im.mode
            if full_decode:
                im.load()
    except Exception as e:  # PIL raises many types for corrupt data
        return None, f"cannot decode image ({type(e).__name__}: {e})"
    return (height, width, mode), None


def _inspect(entry: Entry, check: bool, full_decode: bool) -> tuple[ImageRecord | None, list]:
    problems: list[str] = []
    listed = f" (listed in {entry.listed_in})" if entry.listed_in else ""
    size = entry.size
    if check or size is None:
        info, problem = _header(entry.path, full_decode)
        if problem:
            return None, [f"{entry.path}: {problem}{listed}"]
        if size is not None and info[:2] != size:
            problems.append(
                f"{entry.path}: image is {info[1]}x{info[0]} (WxH) but {entry.listed_in} says "
                f"{size[1]}x{size[0]}"
            )
        size = info[:2]
    if check:
        for mask in (entry.semantic_path, *entry.extra_masks):
            if mask is None:
                continue
            info, problem = _header(mask, full_decode)
            if problem:
                what = "annotation file is missing" if problem == "file is missing" else problem
                problems.append(f"{mask}: {what} (mask of image {entry.path})")
            elif info[:2] != size:
                problems.append(
                    f"{mask}: mask is {info[1]}x{info[0]} (WxH) but its image {entry.path} is "
                    f"{size[1]}x{size[0]}"
                )
            elif info[2] not in ("L", "P"):
                problems.append(f"{mask}: expected a single-channel (L or P) PNG, got {info[2]}")
    record = ImageRecord(
        entry.image_id, entry.path, size[0], size[1], entry.label, entry.semantic_path
    )
    return record, problems


def raise_problems(source: Source, problems: list[str]) -> None:
    if not problems:
        return
    shown = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise DatasetError(
        f"{source.location}: {len(problems)} problem(s) in {source.format} dataset "
        f"{source.root} (split {source.split!r}):\n  {shown}{more}"
    )


def file_map(fn, items: list, desc: str, parallel: bool = True) -> list:
    """``[fn(item) for item in items]``, in threads when there are many (file reads and image
    decoding are I/O bound or release the GIL), with a progress bar on long lists."""
    bar = dict(total=len(items), desc=desc, unit="img", disable=len(items) < PROGRESS_FROM)
    if parallel and len(items) >= PARALLEL_FROM:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(tqdm(pool.map(fn, items, chunksize=64), **bar))
    return [fn(item) for item in tqdm(items, **bar)]


def build_records(
    source: Source, entries: list[Entry], check: bool, full_decode: bool
) -> list[ImageRecord]:
    """Records for ``entries``; file checks when ``check`` (headers are always read where the
    annotations give no size). Raises one DatasetError listing every problem found."""
    needs_io = check or any(e.size is None for e in entries)
    results = file_map(lambda e: _inspect(e, check, full_decode), entries,
                       f"checking {source.split}", parallel=needs_io)  # fmt: skip
    problems = list(source.problems)
    for _, found in results:
        problems.extend(found)
    raise_problems(source, problems)
    return [r for r, _ in results]


def verified_marker(images) -> Path:
    """Where the verdict "every image of this split decodes" is kept: under
    ``$DETLAB_CACHE_DIR`` (default ``~/.cache/detlab``), named by the split's fingerprint
    (which covers every image's path and byte size: a truncated or replaced file changes it)
    and the number of images checked."""
    import hashlib
    import os

    base = Path(os.environ.get("DETLAB_CACHE_DIR") or Path.home() / ".cache" / "detlab")
    key = hashlib.sha256(f"{images.fingerprint}\0{len(images)}".encode()).hexdigest()[:32]
    return base / "decoded" / key


def verify_decodes(images) -> None:
    """Decode every image of ``images`` (an ImageDataset) once, before any compute: a corrupt
    or truncated file raises one DatasetError naming it (header-only checks pass a truncated
    PNG, which then fails mid-training). The verdict is cached (``verified_marker``), so
    later runs on the same files pay nothing."""
    marker = verified_marker(images)
    if marker.exists():
        return
    paths = [r.path for r in images.records]
    found = file_map(lambda p: _header(p, True)[1], paths, f"decoding {images.split} once")
    bad = [(p, problem) for p, problem in zip(paths, found, strict=True) if problem]
    if bad:
        (first, problem), rest = bad[0], [str(p) for p, _ in bad[1:]]
        more = f" (and {len(rest)} more: {', '.join(rest[:3])}{', ...' * (len(rest) > 3)})"
        raise DatasetError(f"{first}: {problem}{more if rest else ''}; fix or remove it")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{images.root} {images.split}: {len(paths)} images decode\n")
