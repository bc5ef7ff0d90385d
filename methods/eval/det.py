"""Detection and instance segmentation: torchvision's Mask R-CNN with an FPN over the
pretrained backbone's C2-C5, fine-tuned on a COCO-format split; AP-bb / AP-mk (and AP50,
AP75) from pycocotools on the held-out split. No pretrained weights are ever downloaded."""

from __future__ import annotations

import contextlib
import io
from collections import OrderedDict

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from tqdm import tqdm

from detlab.methods.augment import as_chw_uint8, to_float


class FPNBackbone(nn.Module):
    """Our backbone's C2-C5 -> FPN P2-P6, keyed '0'..'3', 'pool' as Mask R-CNN expects."""

    def __init__(self, backbone: nn.Module, channels: int = 64):
        super().__init__()
        self.body = backbone
        self.fpn = FeaturePyramidNetwork(
            list(backbone.pyramid_channels), channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = channels

    def forward(self, x: Tensor) -> OrderedDict:
        pyramid = self.body.forward_pyramid(x)
        out = self.fpn(OrderedDict((str(i), pyramid[f"c{i + 2}"]) for i in range(4)))
        return out


def build_mask_rcnn(backbone: nn.Module, num_classes: int, resolution: int) -> MaskRCNN:
    # anchors scale with the images: torchvision's 32..512 px at 256 px -> 8..128 at 64 px
    sizes = tuple((max(4, round(s * resolution / 256)),) for s in (32, 64, 128, 256, 512))
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(sizes))
    return MaskRCNN(
        FPNBackbone(backbone),
        num_classes=num_classes,
        min_size=resolution,
        max_size=resolution,
        rpn_anchor_generator=anchors,
        box_detections_per_img=50,
    )


def targets_of(images, i: int) -> tuple[Tensor, dict]:
    x = to_float(as_chw_uint8(images.load_image(i)))
    masks, cats = images.instances(i)
    boxes, _ = images.boxes(i)
    return x, {
        "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(cats, dtype=torch.int64),
        "masks": torch.as_tensor(np.asarray(masks), dtype=torch.uint8),
    }


def coco_ground_truth(images) -> dict:
    """A COCO instances dict of ``images`` (RLE masks)."""
    anns, imgs = [], []
    for i, r in enumerate(images.records):
        imgs.append({"id": i, "height": r.height, "width": r.width})
        masks, cats = images.instances(i)
        for m, c in zip(masks, cats, strict=True):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            area = float(mask_utils.area(rle))
            bbox = [float(v) for v in mask_utils.toBbox(rle)]
            rle["counts"] = rle["counts"].decode()
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c),
                         "segmentation": rle, "area": area, "bbox": bbox, "iscrowd": 0})  # fmt: skip
    cats = [{"id": int(k), "name": v} for k, v in images.categories.items()]
    return {"images": imgs, "annotations": anns, "categories": cats}


def coco_ap(gt: dict, detections: list[dict], iou_type: str) -> dict[str, float]:
    """AP, AP50, AP75 (fractions) of ``detections`` (COCO results format) against ``gt``."""
    if not detections:
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        res = coco.loadRes(detections)
        ev = COCOeval(coco, res, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ap, ap50, ap75 = (max(0.0, float(v)) for v in ev.stats[:3])  # -1 = no ground truth
    return {"ap": ap, "ap50": ap50, "ap75": ap75}


def detections_of(outputs: dict, image_id: int) -> list[dict]:
    out = []
    boxes = outputs["boxes"].tolist()
    masks = (outputs["masks"][:, 0] > 0.5).numpy().astype(np.uint8)
    for j, (box, label, score) in enumerate(
        zip(boxes, outputs["labels"].tolist(), outputs["scores"].tolist(), strict=True)
    ):
        rle = mask_utils.encode(np.asfortranarray(masks[j]))
        rle["counts"] = rle["counts"].decode()
        x0, y0, x1, y1 = box
        out.append({"image_id": image_id, "category_id": int(label), "score": float(score),
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": rle})  # fmt: skip
    return out


def det_finetune(backbone, train_images, val_images, cfg, device, progress=True) -> dict:
    """Fine-tune Mask R-CNN for ``cfg.steps`` iterations; AP on the val split."""
    num_classes = len(train_images.categories) + 1
    model = build_mask_rcnn(backbone, num_classes, cfg.resolution).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    bs = min(cfg.batch_size, len(train_images))
    model.train()
    bar = tqdm(range(cfg.steps), desc="det fine-tune", disable=not progress, leave=False)
    for _ in bar:
        idx = torch.randint(len(train_images), (bs,), generator=gen).tolist()
        xs, ts = zip(*(targets_of(train_images, i) for i in idx), strict=True)
        losses = model(
            [x.to(device) for x in xs], [{k: v.to(device) for k, v in t.items()} for t in ts]
        )
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"detection fine-tuning loss is {loss.item()}: lower eval.lr")
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    dets, vis = [], []
    with torch.no_grad():
        for i in range(len(val_images)):
            x = to_float(as_chw_uint8(val_images.load_image(i))).to(device)
            out = {k: v.cpu() for k, v in model([x])[0].items()}
            dets += detections_of(out, i)
            if i < cfg.num_visualise:
                vis.append((x.cpu(), out["boxes"][out["scores"] > 0.5]))
    gt = coco_ground_truth(val_images)
    bb, mk = coco_ap(gt, dets, "bbox"), coco_ap(gt, dets, "segm")
    return {**{f"{k}_bb": v for k, v in bb.items()}, **{f"{k}_mk": v for k, v in mk.items()},
            "_vis": vis}  # fmt: skip
