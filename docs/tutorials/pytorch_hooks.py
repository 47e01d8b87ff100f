"""CAM and Grad-CAM in PyTorch as they are written with hooks, next to camkit.

Run from the repository root: ``python docs/tutorials/pytorch_hooks.py``. Offline: the small
network has random weights, so the maps show the mechanics, not where a trained network looks.
"""

from pathlib import Path

import cv2
import numpy as np
import skimage.data
import torch
import torch.nn.functional as F
from torch import nn

import camkit

ROOT = Path(__file__).resolve().parents[2]
FIGURE = ROOT / "docs" / "tutorials" / "figures" / "pytorch_hooks.png"
PHOTOS = ("chelsea", "coffee", "astronaut")
SIZE = 128


class GapCNN(nn.Module):
    """Three convolution blocks, global average pooling and a linear classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def square_photo(name: str, size: int) -> np.ndarray:
    """A scikit-image photo, centre-cropped to a square and resized: uint8 RGB (size, size, 3)."""
    photo = getattr(skimage.data, name)()
    height, width = photo.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = photo[top : top + side, left : left + side]
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)


def upsampled_minmax(maps: torch.Tensor) -> np.ndarray:
    """(N, h, w) maps resized bilinearly to the input size, each rescaled to [0, 1]."""
    maps = F.interpolate(maps[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    low = maps.amin(dim=(2, 3), keepdim=True)
    high = maps.amax(dim=(2, 3), keepdim=True)
    return ((maps - low) / (high - low))[:, 0].numpy()


def cam_with_hooks(model: GapCNN, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """CAM: a forward hook keeps the last block's maps A (N, 64, h, w); the map of class c is
    ``sum_k fc.weight[c, k] * A[:, k]``. Returns the maps and the top-1 classes."""
    kept = {}
    handle = model.features.register_forward_hook(
        lambda module, args, output: kept.update(activations=output.detach())
    )
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    classes = logits.argmax(dim=1)
    weights = model.fc.weight[classes].detach()  # (N, 64)
    maps = torch.einsum("nk,nkhw->nhw", weights, kept["activations"])
    return upsampled_minmax(maps), classes


def gradcam_with_hooks(model: GapCNN, x: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
    """Grad-CAM on the second block's ReLU: a forward hook keeps its output A (N, 32, h, w) and
    registers a hook on that tensor for dy_c/dA; ``loss.backward()`` fills it. The map is
    ``ReLU(sum_k mean_hw(dy_c/dA_k) * A_k)``."""
    kept = {}

    def keep(module: nn.Module, args: tuple[torch.Tensor], output: torch.Tensor) -> None:
        kept["activations"] = output.detach()
        output.register_hook(lambda grad: kept.update(gradients=grad.detach()))

    handle = model.features[3].register_forward_hook(keep)
    model.zero_grad()
    logits = model(x)
    loss = logits.gather(1, classes[:, None]).sum()  # each image's own class score
    loss.backward()  # also fills every parameter's .grad
    handle.remove()
    alphas = kept["gradients"].mean(dim=(2, 3))  # (N, 32)
    maps = torch.relu(torch.einsum("nk,nkhw->nhw", alphas, kept["activations"]))
    return upsampled_minmax(maps)


torch.manual_seed(0)
model = GapCNN().eval()
photos = np.stack([square_photo(name, SIZE) for name in PHOTOS])
x = torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, SIZE, SIZE)

cam_hooks, classes = cam_with_hooks(model, x)
gradcam_hooks = gradcam_with_hooks(model, x, classes)

model.zero_grad(set_to_none=True)  # start camkit from a model with no .grad
model.train()  # camkit runs the model in eval mode and then puts every flag back
cam = camkit.explain(model, x, "cam", layer="features", classifier="fc")
gradcam = camkit.explain(model, x, "gradcam", layer="features.3")
assert (cam.targets == classes.numpy()).all() and (gradcam.targets == classes.numpy()).all()
for name, ours, theirs in (("CAM", cam.cams, cam_hooks), ("Grad-CAM", gradcam.cams, gradcam_hooks)):
    difference = float(np.abs(ours - theirs).max())
    assert difference < 1e-5, (name, difference)
    print(f"{name}: camkit and the hooks differ by at most {difference:.1e}")
# camkit left the model as it found it: no gradients, no hooks, in training mode, autograd on
assert all(p.grad is None for p in model.parameters())
assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
assert model.training and torch.is_grad_enabled()

tiles, titles = [], []
for n, name in enumerate(PHOTOS):
    tiles += [photos[n]] + [
        camkit.overlay(photos[n], m[n]) for m in (cam_hooks, cam.cams, gradcam_hooks, gradcam.cams)
    ]
    titles += [name, "CAM, hooks", "CAM, camkit", "Grad-CAM, hooks", "Grad-CAM, camkit"]
camkit.save_image(FIGURE, camkit.image_grid(tiles, columns=5, titles=titles))
print(f"wrote {FIGURE.relative_to(ROOT)}")
