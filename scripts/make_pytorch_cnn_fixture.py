"""Writes the PyTorch CNN fixtures used by tests/checkpoints.rs.

    python3 -m pip install torch safetensors
    python3 scripts/make_pytorch_cnn_fixture.py

* tests/fixtures/torch_cnn_bn.safetensors: the state_dict of an nn.Sequential CNN
  (Conv2d, BatchNorm2d, ReLU, MaxPool2d, twice, then Flatten and Linear), float64, after a
  few SGD steps so that the running statistics (and num_batches_tracked) have moved;
* tests/fixtures/torch_cnn_bn_expected.safetensors: an input batch `inputs/x`, already in
  tapegrad's NHWC layout, and PyTorch's evaluation-mode logits for it, `outputs/logits`.

The Flatten before the Linear is the layout-sensitive part: PyTorch flattens (C, H, W), so
the tapegrad model uses `Flatten::channels_first()` there. The Rust test needs neither
Python nor PyTorch: it reads the committed files.
"""
import pathlib

import torch
from safetensors.torch import save_file
from torch import nn

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)

model = nn.Sequential(
    nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(4 * 2 * 2, 3),
)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
model.train()
for _ in range(5):
    x = torch.randn(8, 1, 8, 8) * 2.0 + 0.5
    y = torch.randint(0, 3, (8,))
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

model.eval()
x = torch.randn(6, 1, 8, 8) * 2.0 + 0.5
with torch.no_grad():
    logits = model(x)

save_file(model.state_dict(), OUT / "torch_cnn_bn.safetensors")
nhwc = x.permute(0, 2, 3, 1).contiguous()
save_file({"inputs/x": nhwc, "outputs/logits": logits}, OUT / "torch_cnn_bn_expected.safetensors")
print("torch", torch.__version__)
print("state_dict:", {k: tuple(v.shape) for k, v in model.state_dict().items()})
print("wrote", OUT / "torch_cnn_bn.safetensors", "and", OUT / "torch_cnn_bn_expected.safetensors")
