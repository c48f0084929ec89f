"""Writes the PyTorch-interop fixtures used by tests/checkpoints.rs.

    python3 -m pip install torch safetensors
    python3 scripts/make_pytorch_fixture.py

* tests/fixtures/torch_mlp_bn.safetensors: the state_dict of an nn.Sequential MLP with two
  BatchNorm1d layers, float64, after a few SGD steps so that the running statistics (and
  num_batches_tracked) have moved from their initial values;
* tests/fixtures/torch_mlp_bn_expected.safetensors: an input batch `inputs/x` and PyTorch's
  evaluation-mode logits for it, `outputs/logits`.

The Rust test needs neither Python nor PyTorch: it reads the committed files.
"""
import pathlib

import torch
from safetensors.torch import save_file
from torch import nn

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)

model = nn.Sequential(
    nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(),
    nn.Linear(7, 7), nn.BatchNorm1d(7), nn.ReLU(),
    nn.Linear(7, 3),
)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
model.train()
for _ in range(5):
    x = torch.randn(16, 5) * 3.0 + 1.0
    y = torch.randint(0, 3, (16,))
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

model.eval()
x = torch.randn(10, 5) * 3.0 + 1.0
with torch.no_grad():
    logits = model(x)

save_file(model.state_dict(), OUT / "torch_mlp_bn.safetensors")
save_file({"inputs/x": x, "outputs/logits": logits}, OUT / "torch_mlp_bn_expected.safetensors")
print("state_dict:", {k: tuple(v.shape) for k, v in model.state_dict().items()})
print("wrote", OUT / "torch_mlp_bn.safetensors", "and", OUT / "torch_mlp_bn_expected.safetensors")
