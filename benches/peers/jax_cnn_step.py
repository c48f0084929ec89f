"""The CNN workload's training step (workload section 10) in JAX + Flax linen, the whole step
under jax.jit (float32, NHWC as Flax lays it out).

    python3 -m pip install jax flax optax
    taskset -c 0,1 python3 benches/peers/jax_cnn_step.py CNN-S CNN-M
"""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402

from workload import CNN_CONFIGS, cnn_data, measure  # noqa: E402


class Cnn(nn.Module):
    channels: tuple
    classes: int

    @nn.compact
    def __call__(self, x, train):
        for i, c in enumerate(self.channels):
            x = nn.Conv(c, (3, 3), padding="SAME")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
            x = nn.relu(x)
            if i == 0:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.classes)(x)


def run(name):
    _, _, _, channels, classes, warmup, timed = CNN_CONFIGS[name]
    x, labels = cnn_data(name)
    model = Cnn(channels, classes)
    variables = model.init(jax.random.PRNGKey(0), jnp.asarray(x), train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
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

    xs, ys = jnp.asarray(x), jnp.asarray(labels.astype("int32"))
    state = [params, batch_stats, opt_state]

    def one_step():
        *state[:], loss = step(*state, xs, ys)
        return float(loss)

    measure("jax+flax linen (jit)", name, one_step, warmup, timed, jax=jax.__version__)


if __name__ == "__main__":
    for name in sys.argv[1:] or list(CNN_CONFIGS):
        run(name)
