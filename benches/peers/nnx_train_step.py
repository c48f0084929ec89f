"""The workload's training step in Flax NNX, the step under `nnx.jit` with
`nnx.cached_partial` (the "cached jit" of the issue's table; float32).

    python3 -m pip install jax flax optax
    taskset -c 0,1 python3 benches/peers/nnx_train_step.py          # S, M and L
    taskset -c 0,1 python3 benches/peers/nnx_train_step.py S M

The same workload as jax_train_step.py (../shared/bench/workload.md): Linear-BatchNorm-ReLU x2
then Linear, BatchNorm momentum 0.9, mean softmax cross-entropy, SGD momentum 0.9 lr 0.1 on
the nnx.Param variables only (BatchStat variables are updated by the forward pass), the same
fixed batch every step, kernels from numpy default_rng(0). One JSON line per size.
"""
import math
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=2")

import flax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from workload import CONFIGS, SplitMix64, measure  # noqa: E402


class Mlp(nnx.Module):
    def __init__(self, d_in, hidden, classes, rngs):
        self.dense0 = nnx.Linear(d_in, hidden, rngs=rngs)
        self.bn0 = nnx.BatchNorm(hidden, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.dense1 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.bn1 = nnx.BatchNorm(hidden, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.dense2 = nnx.Linear(hidden, classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn0(self.dense0(x)))
        x = nnx.relu(self.bn1(self.dense1(x)))
        return self.dense2(x)


@nnx.jit
def train_step(model, optimizer, x, labels):
    def loss_fn(model):
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)  # grads of nnx.Param only
    optimizer.update(model, grads)
    return loss



def run(name):
    batch, d_in, hidden, classes, warmup, timed = CONFIGS[name]
    rng = SplitMix64(42)
    x = np.array([rng.normal() for _ in range(batch * d_in)], dtype=np.float32).reshape(batch, d_in)
    labels = np.array([rng.next_u64() % classes for _ in range(batch)], dtype=np.int32)
    model = Mlp(d_in, hidden, classes, nnx.Rngs(0))
    init_rng = np.random.default_rng(0)
    for layer, (fan_in, fan_out) in zip(
        [model.dense0, model.dense1, model.dense2], [(d_in, hidden), (hidden, hidden), (hidden, classes)]
    ):
        kernel = init_rng.standard_normal((fan_in, fan_out)) / math.sqrt(fan_in)
        layer.kernel.value = jnp.asarray(kernel, jnp.float32)
    model.train()
    optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
    step = nnx.cached_partial(train_step, model, optimizer)

    xs, ys = jnp.asarray(x), jnp.asarray(labels)
    measure("flax nnx (cached jit)", name, lambda: float(step(xs, ys)), warmup, timed, flax=flax.__version__)

if __name__ == "__main__":
    for name in sys.argv[1:] or ["S", "M", "L"]:
        run(name)
