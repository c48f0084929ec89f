"""The CNN workload's training step (workload section 10) in PyTorch eager (float32).

    python3 -m pip install torch numpy
    taskset -c 0,1 python3 benches/peers/torch_cnn_step.py CNN-S CNN-M

Conv2d(3x3, padding 1) -> BatchNorm2d -> ReLU -> MaxPool2d(2) -> Conv2d -> BatchNorm2d -> ReLU
-> mean over H, W -> Linear; mean cross-entropy; SGD momentum 0.9, lr 0.1; NCHW (PyTorch's
native layout: the NHWC inputs are permuted once, outside the timed step). Two threads.
"""
import sys

import torch
from torch import nn

from workload import CNN_CONFIGS, cnn_data, measure

torch.set_num_threads(2)


def run(name):
    batch, side, in_channels, (c1, c2), classes, warmup, timed = CNN_CONFIGS[name]
    x, labels = cnn_data(name)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(in_channels, c1, 3, padding=1), nn.BatchNorm2d(c1, momentum=0.1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2, momentum=0.1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c2, classes),
    )
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step():
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    measure("pytorch eager", name, step, warmup, timed, torch=torch.__version__)


if __name__ == "__main__":
    for name in sys.argv[1:] or list(CNN_CONFIGS):
        run(name)
