"""Higher orders of the workload's MLP in JAX, each jitted (float32): a gradient
(`jax.value_and_grad`), a Hessian-vector product by forward-over-reverse
(`jax.jvp(jax.grad(loss), ...)`), a forward pass and a forward pass with its tangent
(`jax.jvp`), for `cargo bench --bench higher_order` to be compared with.

    python3 -m pip install jax
    taskset -c 0,1 python3 benches/peers/jax_higher_order.py          # S and M
    taskset -c 0,1 python3 benches/peers/jax_higher_order.py S

The model is the workload's (Dense-BatchNorm-ReLU twice, then Dense; BatchNorm in training
mode, differentiated through its batch statistics; mean softmax cross-entropy), written in
jax.numpy; the data from SplitMix64 seed 42, kernels from numpy default_rng(0), a random
direction from default_rng(7). Prints one JSON line per size and case, as `measure` does.
"""
import math
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from workload import CONFIGS, SplitMix64, measure  # noqa: E402

EPSILON = 1e-5


def loss(params, x, labels):
    h = x
    for i in range(2):
        h = h @ params[f"Dense_{i}/kernel"] + params[f"Dense_{i}/bias"]
        mean = h.mean(axis=0)
        var = ((h - mean) ** 2).mean(axis=0)
        h = (h - mean) / jnp.sqrt(var + EPSILON) * params[f"BatchNorm_{i}/scale"] + params[f"BatchNorm_{i}/bias"]
        h = jax.nn.relu(h)
    logits = h @ params["Dense_2/kernel"] + params["Dense_2/bias"]
    picked = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)
    return -picked.mean()


def run(name):
    batch, d_in, hidden, classes, warmup, timed = CONFIGS[name]
    rng = SplitMix64(42)
    x = np.array([rng.normal() for _ in range(batch * d_in)], dtype=np.float32).reshape(batch, d_in)
    labels = np.array([rng.next_u64() % classes for _ in range(batch)], dtype=np.int32)
    init = np.random.default_rng(0)
    params = {}
    for i, (fan_in, fan_out) in enumerate([(d_in, hidden), (hidden, hidden), (hidden, classes)]):
        params[f"Dense_{i}/kernel"] = jnp.asarray(init.standard_normal((fan_in, fan_out)) / math.sqrt(fan_in), jnp.float32)
        params[f"Dense_{i}/bias"] = jnp.zeros(fan_out, jnp.float32)
    for i in range(2):
        params[f"BatchNorm_{i}/scale"] = jnp.ones(hidden, jnp.float32)
        params[f"BatchNorm_{i}/bias"] = jnp.zeros(hidden, jnp.float32)
    direction = np.random.default_rng(7)
    v = {k: jnp.asarray(direction.standard_normal(a.shape), jnp.float32) for k, a in params.items()}
    xs, ys = jnp.asarray(x), jnp.asarray(labels)

    f = lambda p: loss(p, xs, ys)  # noqa: E731
    gradient = jax.jit(jax.value_and_grad(f))
    hvp = jax.jit(lambda p, v: jax.jvp(jax.grad(f), (p,), (v,))[1])
    forward = jax.jit(f)
    jvp = jax.jit(lambda p, v: jax.jvp(f, (p,), (v,)))

    cases = {
        "gradient": lambda: float(gradient(params)[0]),
        "hvp": lambda: float(hvp(params, v)["Dense_2/bias"][0]),
        "forward": lambda: float(forward(params)),
        "jvp": lambda: float(jvp(params, v)[1]),
    }
    for case, call in cases.items():
        measure(f"jax (jit) {case}", name, call, warmup, timed, jax=jax.__version__)


if __name__ == "__main__":
    for name in sys.argv[1:] or ["S", "M"]:
        run(name)
