"""Loads a model tapegrad exported into PyTorch, and checks PyTorch's logits against tapegrad's.

    cargo run --release --example 06_train_cnn -- --export-pytorch target/pytorch-export
    python3 -m pip install torch safetensors
    python3 scripts/check_pytorch_export.py target/pytorch-export

The example trains its digits CNN and writes `digits_cnn.safetensors` with
`tapegrad::checkpoint::export_pytorch` (a PyTorch state_dict: names, OIHW kernels, BatchNorm
buffers with an int64 num_batches_tracked), and `digits_cnn_expected.safetensors` with the
test images (NHWC) and tapegrad's evaluation-mode logits. Here the same architecture is
built as an `nn.Sequential`, loaded with PyTorch's strict `load_state_dict`, and run in
evaluation mode on the images permuted to NCHW. Prints the largest logit difference and how
many predictions agree; exits non-zero if they do not match to float32 precision.
"""
import pathlib
import sys

import torch
from safetensors.torch import load_file
from torch import nn


class GlobalAvgPool(nn.Module):
    """tapegrad's GlobalAvgPool: the mean over the spatial axes, (N, C, H, W) -> (N, C)."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


def digits_cnn(channels=(16, 32)):
    """The example's model, module for module (so module i here is layer i there)."""
    layers, inputs = [], 1
    for c in channels:
        layers += [nn.Conv2d(inputs, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                   nn.ReLU(), nn.MaxPool2d(2)]
        inputs = c
    return nn.Sequential(*layers, GlobalAvgPool(), nn.Linear(inputs, 10))


folder = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/pytorch-export")
model = digits_cnn()
model.load_state_dict(load_file(folder / "digits_cnn.safetensors"))  # strict
model.eval()
expected = load_file(folder / "digits_cnn_expected.safetensors")
images = expected["inputs/x"].permute(0, 3, 1, 2)  # NHWC -> NCHW
with torch.no_grad():
    logits = model(images)
ours = expected["outputs/logits"]
worst = (logits - ours).abs().max().item()
scale = ours.abs().max().item()
agree = (logits.argmax(1) == ours.argmax(1)).float().mean().item()
print(f"torch {torch.__version__}: {len(images)} test images, largest logit difference "
      f"{worst:.3e} (logits up to {scale:.1f}), predictions agree on {100 * agree:.1f}%")
sys.exit(0 if worst <= 1e-5 * max(1.0, scale) and agree == 1.0 else 1)
