"""SCNet-50 as the backbone of torchvision's Faster R-CNN with FPN (``scnet.models.detection_backbone``): a forward
in evaluation, and one training step on a tiny made-up detection set that trains layer2-layer4 and leaves the
frozen stem, layer1 and every (frozen) BN as loaded."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.models.detection import FasterRCNN
from torchvision.ops import FrozenBatchNorm2d

from scnet.models import detection_backbone

SIZE = 128


def _detector(weights) -> FasterRCNN:
    torch.manual_seed(0)
    backbone = detection_backbone("scnet50", pretrained=weights)  # trainable_layers=3, as torchvision's default
    # A small image side keeps the test fast (SCNet needs >= 97 px); few proposals for the same reason.
    return FasterRCNN(
        backbone, num_classes=3, min_size=SIZE, max_size=SIZE, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=50
    )


def _made_up_set() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two 128 px images, each with a bright box or two on a dark noisy background, labelled 1 or 2."""
    gen = torch.Generator().manual_seed(1)
    boxes = [torch.tensor([[10.0, 20.0, 60.0, 90.0]]), torch.tensor([[30.0, 30.0, 100.0, 70.0], [5, 80, 40, 120]])]
    labels = [torch.tensor([1]), torch.tensor([2, 1])]
    images = []
    for image_boxes in boxes:
        image = torch.rand(3, SIZE, SIZE, generator=gen) * 0.2
        for x0, y0, x1, y1 in image_boxes.int().tolist():
            image[:, y0:y1, x0:x1] += 0.7
        images.append(image)
    return images, [{"boxes": b, "labels": c} for b, c in zip(boxes, labels, strict=True)]


def test_faster_rcnn_with_an_scnet50_fpn_backbone(scnet50_file, scnet50_state_dict):
    model = _detector(scnet50_file)
    body = model.backbone.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())  # frozen BN everywhere
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in body.modules()) > 100
    own = body.state_dict()  # the release file's weights, its classifier dropped with the pooling
    assert all(torch.equal(own[k], scnet50_state_dict[k]) for k in own)
    assert list(model.backbone.body.return_layers) == ["layer1", "layer2", "layer3", "layer4"]

    model.eval()
    with torch.no_grad():
        (found,) = model([torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))])
    assert set(found) == {"boxes", "labels", "scores"} and found["boxes"].shape[1:] == (4,)

    model.train()
    before = copy.deepcopy(body.state_dict())
    images, targets = _made_up_set()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    optimizer.step()
    norms = {name for name, m in body.named_modules() if isinstance(m, FrozenBatchNorm2d)}
    changed = []
    for key, value in body.state_dict().items():
        if key.startswith(("conv1.", "layer1.")) or key.rpartition(".")[0] in norms:
            assert torch.equal(value, before[key]), key  # the frozen stem and layer1, every BN's four buffers
        else:  # a convolution of layer2-layer4
            assert key.startswith(("layer2.", "layer3.", "layer4.")) and key.endswith(".weight"), key
            changed.append(not torch.equal(value, before[key]))
    assert len(changed) == 13 * 7 + 3 and all(changed)  # 13 blocks of 7 convs, 3 shortcuts: every one trained


def test_trainable_layers_and_returned_layers():
    backbone = detection_backbone("scnet50", trainable_layers=5, returned_layers=[2, 4], out_channels=64)
    assert all(p.requires_grad for p in backbone.body.parameters())  # FrozenBatchNorm2d has buffers only
    assert list(backbone.body.return_layers) == ["layer2", "layer4"] and backbone.out_channels == 64
    frozen_all = detection_backbone("scnet50", trainable_layers=0)
    assert not any(p.requires_grad for p in frozen_all.body.parameters())
    with pytest.raises(ValueError, match="trainable_layers must be in 0-5, got 6"):
        detection_backbone("scnet50", trainable_layers=6)
    with pytest.raises(ValueError, match=r"returned_layers must be stages in 1-4, got \[0, 1\]"):
        detection_backbone("scnet50", returned_layers=[0, 1])
