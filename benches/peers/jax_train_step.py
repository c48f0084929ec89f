"""The workload's training step in JAX + Flax linen, the whole step under jax.jit (float32).

    python3 -m pip install jax flax optax
    taskset -c 0,1 python3 benches/peers/jax_train_step.py          # S, M and L
    taskset -c 0,1 python3 benches/peers/jax_train_step.py S M

Follows ../shared/bench/workload.md: the MLP Dense-BatchNorm-ReLU x2 then Dense, BatchNorm
momentum 0.9 (Flax convention), mean softmax cross-entropy, SGD momentum 0.9 lr 0.1 on params
only, batch_stats replaced by the forward's; the same fixed batch every step; inputs from
SplitMix64 + Box-Muller seed 42; kernels from numpy default_rng(0). Prints one JSON line per
size: median, p10 and p90 microseconds per step, and the first step's seconds.
"""
import math
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402

from workload import CONFIGS, SplitMix64, measure  # noqa: E402


class Mlp(nn.Module):
    hidden: int
    classes: int

    @nn.compact
    def __call__(self, x, train):
        for _ in range(2):
            x = nn.Dense(self.hidden)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
            x = nn.relu(x)
        return nn.Dense(self.classes)(x)



def run(name):
    batch, d_in, hidden, classes, warmup, timed = CONFIGS[name]
    rng = SplitMix64(42)
    x = np.array([rng.normal() for _ in range(batch * d_in)], dtype=np.float32).reshape(batch, d_in)
    labels = np.array([rng.next_u64() % classes for _ in range(batch)], dtype=np.int32)
    model = Mlp(hidden, classes)
    variables = model.init(jax.random.PRNGKey(0), jnp.asarray(x), train=False)
    init_rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda a: a, variables["params"])
    params = dict(params)
    for i, (fan_in, fan_out) in enumerate([(d_in, hidden), (hidden, hidden), (hidden, classes)]):
        kernel = init_rng.standard_normal((fan_in, fan_out)) / math.sqrt(fan_in)
        params[f"Dense_{i}"] = {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.zeros(fan_out, jnp.float32)}
    batch_stats = variables["batch_stats"]
    optimizer = optax.sgd(0.1, momentum=0.9)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, batch_stats, opt_state, x, labels):
        def loss_fn(p):
            logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updates["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    xs, ys = jnp.asarray(x), jnp.asarray(labels)
    state = [params, batch_stats, opt_state]

    def one_step():
        *state[:], loss = step(*state, xs, ys)  # the new params, batch_stats, opt_state
        return float(loss)

    measure("jax+flax linen (jit)", name, one_step, warmup, timed, jax=jax.__version__)

if __name__ == "__main__":
    for name in sys.argv[1:] or ["S", "M", "L"]:
        run(name)
