"""No method step reads device values on the host (a GPU sync per read), checked on the CPU.

A torch function mode records every call that hands a tensor's value to Python or sizes a
result by its data (``item``, ``bool()``, ``int()``, ``nonzero``, boolean-mask indexing...):
on a GPU each one stalls the step until the device catches up. The only reads allowed are
the two validity checks that run on CPU tensors alone (``device.type == "cpu"``), which a
GPU run skips. tests/benchmarks/bench_gpu.py counts the real syncs on a GPU."""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode

from detlab.methods.registry import METHODS, build_method
from detlab.platform.compose import compose, group_options

READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero",
         "argwhere", "unique", "masked_select"}  # fmt: skip
CPU_ONLY_CHECKS = {("__int__", "pool_masks"), ("__bool__", "sample_mask_ids")}


class HostReads(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.found: set[tuple[str, str, str]] = set()  # (op, function, file:line)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        index = args[1] if name == "__getitem__" and len(args) > 1 else ()
        masks = [i for i in (index if isinstance(index, tuple) else (index,))
                 if torch.is_tensor(i) and i.dtype == torch.bool]  # fmt: skip
        if name in READS or masks:
            ours = [f for f in traceback.extract_stack()[:-1] if "detlab" in f.filename
                    or "/methods/" in f.filename]  # fmt: skip
            where = ours[-1] if ours else None
            self.found.add((name, where.name if where else "?",
                            f"{where.filename}:{where.lineno}" if where else "?"))  # fmt: skip
        return func(*args, **(kwargs or {}))


def synthetic(method, b: int = 8, r: int = 32) -> dict:
    if method.input_kind == "boxes":
        xy = torch.rand(b, 4, 2) * r / 2
        boxes = torch.cat([xy, xy + r / 4], -1)
        return {"v1": torch.randn(b, 3, r, r), "v2": torch.randn(b, 3, r, r),
                "v3": torch.randn(b, 3, r // 2, r // 2), "boxes1": boxes, "boxes2": boxes,
                "boxes3": boxes / 2, "box_valid": torch.rand(b, 4) > 0.3,
                "index": torch.arange(b), "step": 3, "seed": 0}  # fmt: skip
    masks = torch.randint(0, 6, (b, r // 8, r // 8)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    return {"view1": torch.randn(b, 3, r, r), "view2": torch.randn(b, 3, r, r),
            "mask1": masks, "mask2": masks.flip(2), "index": torch.arange(b), "step": 3,
            "seed": 0}  # fmt: skip


@pytest.mark.parametrize("name", group_options("method"))
def test_a_method_step_reads_nothing_on_the_host(name):
    torch.manual_seed(0)
    cfg = compose(["experiment=tiny", f"method={name}"])
    method = build_method(cfg.method, cfg.backbone, cfg.aug)
    batch = synthetic(method)
    with HostReads() as reads:
        out = method(batch)
        out["loss"].backward()
        method.update_target(3, 10)
    unexpected = {r for r in reads.found if r[:2] not in CPU_ONLY_CHECKS}
    assert not unexpected, f"{name}: host reads (GPU syncs) at {sorted(unexpected)}"


def test_the_detector_sees_host_reads():
    with HostReads() as reads:
        x = torch.randn(6)
        torch.nonzero(x > 0), bool(x.sum() > 0), x[x > 0], x.sum().item()
    assert {r[0] for r in reads.found} == {"nonzero", "__bool__", "__getitem__", "item"}
    assert set(METHODS) == set(group_options("method"))
