"""Writes tests/fixtures/torch_bn_convention.safetensors, used by tests/pytorch_batch_norm.rs.

    python3 -m pip install torch safetensors
    python3 scripts/make_pytorch_bn_convention_fixture.py

PyTorch's own running statistics, to check `BatchNorm::pytorch` against: for
`momentum=0.1` (PyTorch's default, the weight of the new value) and `momentum=None` (the
cumulative moving average over `num_batches_tracked`), a BatchNorm1d on (batch, features)
and a BatchNorm2d on NCHW images, each run in training mode on three batches. Recorded, in
float64:

* `<case>/x/<step>`: the batches, images already in tapegrad's NHWC layout;
* `<case>/init/<field>`: the layer's state_dict before the first step (weight and bias
  random, so that the output depends on them; running statistics at PyTorch's init);
* `<case>/step/<step>/<field>`: running_mean, running_var, num_batches_tracked after the step;
* `<case>/step/<step>/y`: the training-mode output of the step (NHWC for images);
* `<case>/eval/y`: the evaluation-mode output on the last batch after the three steps.

Cases: `bn1d_momentum`, `bn1d_cumulative`, `bn2d_momentum`, `bn2d_cumulative`. The Rust
test needs neither Python nor PyTorch: it reads the committed file.
"""
import pathlib

import torch
from safetensors.torch import save_file
from torch import nn

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
torch.manual_seed(0)
torch.set_default_dtype(torch.float64)

tensors = {}
for case, make, shape in [
    ("bn1d_momentum", lambda: nn.BatchNorm1d(4, momentum=0.1), (6, 4)),
    ("bn1d_cumulative", lambda: nn.BatchNorm1d(4, momentum=None), (6, 4)),
    ("bn2d_momentum", lambda: nn.BatchNorm2d(3, momentum=0.1), (2, 3, 3, 4)),
    ("bn2d_cumulative", lambda: nn.BatchNorm2d(3, momentum=None), (2, 3, 3, 4)),
]:
    layer = make()
    with torch.no_grad():
        layer.weight.copy_(torch.rand_like(layer.weight) + 0.5)
        layer.bias.copy_(torch.randn_like(layer.bias))
    images = len(shape) == 4
    nhwc = (lambda t: t.permute(0, 2, 3, 1).contiguous()) if images else (lambda t: t)
    for field, value in layer.state_dict().items():
        tensors[f"{case}/init/{field}"] = value.clone().to(torch.float64)
    layer.train()
    for step in range(3):
        x = torch.randn(*shape) * (1.0 + step) + 0.5 * step
        y = layer(x)
        tensors[f"{case}/x/{step}"] = nhwc(x)
        tensors[f"{case}/step/{step}/y"] = nhwc(y.detach())
        for field in ("running_mean", "running_var", "num_batches_tracked"):
            value = getattr(layer, field).clone().to(torch.float64)
            tensors[f"{case}/step/{step}/{field}"] = value
    layer.eval()
    with torch.no_grad():
        tensors[f"{case}/eval/y"] = nhwc(layer(x))

save_file(tensors, OUT / "torch_bn_convention.safetensors")
print("torch", torch.__version__, "wrote", len(tensors), "tensors to",
      OUT / "torch_bn_convention.safetensors")
