"""The workload's training step in PyTorch eager mode (float32, 2 threads), with the native
fused nn.BatchNorm1d(momentum=0.1), as the workload's performance table uses.

    python3 -m pip install torch      # the registry wheel pulls about 4 GB of CUDA libraries
    taskset -c 0,1 python3 benches/peers/torch_train_step.py          # S, M and L

Same data, initialisation, optimizer and timing as jax_train_step.py; one JSON line per size.
(The native BatchNorm1d updates running_var with the unbiased variance: the cost is the same.)
"""
import math
import sys

import numpy as np
import torch
from torch import nn

from workload import CONFIGS, SplitMix64, measure

torch.set_num_threads(2)



def run(name):
    batch, d_in, hidden, classes, warmup, timed = CONFIGS[name]
    rng = SplitMix64(42)
    x = torch.tensor([rng.normal() for _ in range(batch * d_in)], dtype=torch.float32).reshape(batch, d_in)
    labels = torch.tensor([rng.next_u64() % classes for _ in range(batch)], dtype=torch.int64)
    model = nn.Sequential(
        nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden, momentum=0.1), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden, momentum=0.1), nn.ReLU(),
        nn.Linear(hidden, classes),
    )
    init_rng = np.random.default_rng(0)
    with torch.no_grad():
        for layer, (fan_in, fan_out) in zip([model[0], model[3], model[6]], [(d_in, hidden), (hidden, hidden), (hidden, classes)]):
            kernel = init_rng.standard_normal((fan_in, fan_out)) / math.sqrt(fan_in)
            layer.weight.copy_(torch.tensor(kernel.T, dtype=torch.float32))
            layer.bias.zero_()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        optimizer.step()
        return loss.item()

    measure("pytorch eager", name, step, warmup, timed, torch=torch.__version__)

if __name__ == "__main__":
    for name in sys.argv[1:] or ["S", "M", "L"]:
        run(name)
