"""The dominant Hessian eigenvalue of example 09's trained network, computed again by JAX and
by PyTorch, each where it is installed, to compare with tapegrad's.

    cargo run --release -p tapegrad-examples --example 09_hessian_eigenvalue
    python3 scripts/hessian_eigenvalue.py out/hessian_wine.safetensors

The file holds the trained params (Flax layout: Dense kernels (in, out)), the training rows
and labels, and tapegrad's eigenvalue. The loss is the mean softmax cross-entropy of the MLP
(Dense, BatchNorm in training mode with the biased batch variance and epsilon 1e-5, ReLU;
twice; then Dense) on all the rows at once, in float64. Both peers run the same power
iteration as the example, from their own random start: the dominant eigenvalue does not
depend on it. Prints each value and its relative difference to tapegrad's.
"""

import json
import struct
import sys

import numpy as np

EPSILON = 1e-5
HIDDEN_LAYERS = 2


def read_safetensors(path):
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = f.read()
    arrays = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        assert entry["dtype"] == "F64", (name, entry["dtype"])
        start, end = entry["data_offsets"]
        arrays[name] = np.frombuffer(data[start:end], dtype="<f8").reshape(entry["shape"])
    return arrays


def power_iteration(hvp, v, steps=500):
    norm = np.sqrt(sum(np.sum(a * a) for a in v.values()))
    v = {k: a / norm for k, a in v.items()}
    estimate = 0.0
    for _ in range(steps):
        hv = hvp(v)
        new = sum(np.sum(v[k] * hv[k]) for k in v)
        norm = np.sqrt(sum(np.sum(a * a) for a in hv.values()))
        v = {k: a / norm for k, a in hv.items()}
        if abs(new - estimate) <= 1e-12 * abs(new):
            return new
        estimate = new
    return estimate


def with_jax(params, x, labels):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)

    def loss(p):
        h = jnp.asarray(x)
        for i in range(HIDDEN_LAYERS):
            h = h @ p[f"Dense_{i}/kernel"] + p[f"Dense_{i}/bias"]
            mean = h.mean(axis=0)
            var = ((h - mean) ** 2).mean(axis=0)
            h = (h - mean) / jnp.sqrt(var + EPSILON) * p[f"BatchNorm_{i}/scale"] + p[f"BatchNorm_{i}/bias"]
            h = jax.nn.relu(h)
        logits = h @ p[f"Dense_{HIDDEN_LAYERS}/kernel"] + p[f"Dense_{HIDDEN_LAYERS}/bias"]
        picked = jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(labels)[:, None], axis=1)
        return -picked.mean()

    p = {k: jnp.asarray(v) for k, v in params.items()}
    hvp = jax.jit(lambda v: jax.jvp(jax.grad(loss), (p,), (v,))[1])
    rng = np.random.default_rng(0)
    v = {k: rng.standard_normal(a.shape) for k, a in params.items()}
    return float(power_iteration(lambda v: {k: np.asarray(a) for k, a in hvp(v).items()}, v))


def with_torch(params, x, labels):
    import torch

    torch.set_default_dtype(torch.float64)
    p = {k: torch.tensor(v) for k, v in params.items()}
    xs, ys = torch.tensor(x), torch.tensor(labels, dtype=torch.long)

    def loss(*flat):
        q = dict(zip(p.keys(), flat))
        h = xs
        for i in range(HIDDEN_LAYERS):
            h = h @ q[f"Dense_{i}/kernel"] + q[f"Dense_{i}/bias"]
            h = torch.nn.functional.batch_norm(
                h, None, None, q[f"BatchNorm_{i}/scale"], q[f"BatchNorm_{i}/bias"], training=True, eps=EPSILON
            )
            h = torch.relu(h)
        logits = h @ q[f"Dense_{HIDDEN_LAYERS}/kernel"] + q[f"Dense_{HIDDEN_LAYERS}/bias"]
        return torch.nn.functional.cross_entropy(logits, ys)

    def hvp(v):
        _, product = torch.autograd.functional.hvp(
            loss, tuple(p.values()), tuple(torch.tensor(v[k]) for k in p)
        )
        return {k: t.numpy() for k, t in zip(p.keys(), product)}

    rng = np.random.default_rng(0)
    v = {k: rng.standard_normal(a.shape) for k, a in params.items()}
    return float(power_iteration(hvp, v))


def main(path):
    arrays = read_safetensors(path)
    params = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    x, labels = arrays["data/x"], arrays["data/labels"].astype(np.int64)
    ours = float(arrays["result/eigenvalue"])
    print(f"tapegrad: {ours:.12f}")
    for name, peer in (("JAX", with_jax), ("PyTorch", with_torch)):
        try:
            value = peer(params, x, labels)
        except ImportError as missing:
            print(f"{name}: not installed ({missing.name})")
            continue
        print(f"{name}: {value:.12f}  (relative difference {abs(value - ours) / abs(value):.1e})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/hessian_wine.safetensors")
