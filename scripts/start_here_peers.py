"""Runs the Python columns of the guide's chapter 0 (docs/00-start-here.md), so that what the
chapter quotes is code that works and claims that hold: one model with a BatchNorm and a
fixed embedding table, one training step, in PyTorch, Flax linen, Flax NNX and Equinox.

    /path/to/torch-venv/bin/python scripts/start_here_peers.py   # the PyTorch part
    /path/to/jax-venv/bin/python scripts/start_here_peers.py     # linen, NNX, Equinox

Each part runs if its framework imports. Checked with torch 2.15, jax 0.10.2, flax 0.12.8,
optax, equinox (versions printed).
"""
import importlib.util


def have(name):
    return importlib.util.find_spec(name) is not None


if have("torch"):
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 16)
            self.bn = nn.BatchNorm1d(16)  # running_mean, running_var, num_batches_tracked
            self.register_buffer("table", torch.randn(10, 16))  # fixed: a buffer
            self.out = nn.Linear(16, 3)

        def forward(self, x, ids):
            return self.out(torch.relu(self.bn(self.fc(x))) + self.table[ids])

    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # buffers are not parameters
    x, ids, y = torch.randn(4, 2), torch.tensor([0, 3, 3, 9]), torch.tensor([0, 1, 2, 1])
    model.train()
    before = model.bn.running_mean.clone()
    loss = nn.functional.cross_entropy(model(x, ids), y)
    loss.backward()
    opt.step()
    assert not model.table.requires_grad and model.table.grad is None
    assert not torch.equal(model.bn.running_mean, before)  # written inside the forward
    assert "table" not in dict(model.named_parameters())
    model.table[0] = 1.0  # a wrong write: PyTorch does not object
    print("torch", torch.__version__, "ok")

if have("flax"):
    import jax
    import jax.numpy as jnp
    import flax
    import optax
    from flax import linen

    class LinenModel(linen.Module):
        @linen.compact
        def __call__(self, x, ids, train: bool):
            h = linen.Dense(16)(x)
            h = linen.BatchNorm(use_running_average=not train, momentum=0.9)(h)
            table = self.variable("constants", "table",
                                  lambda: jax.random.normal(self.make_rng("params"), (10, 16)))
            return linen.Dense(3)(linen.relu(h) + table.value[ids])

    x, ids, y = jnp.ones((4, 2)), jnp.array([0, 3, 3, 9]), jnp.array([0, 1, 2, 1])
    model = LinenModel()
    variables = model.init(jax.random.key(0), x, ids, train=False)  # params, batch_stats, constants
    assert set(variables) == {"params", "batch_stats", "constants"}

    def loss_fn(params):
        logits, updates = model.apply({**variables, "params": params}, x, ids, train=True,
                                      mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    assert "table" not in jax.tree_util.tree_map(lambda a: a.shape, grads)
    variables = {**variables, "batch_stats": updates["batch_stats"]}

    class WrongWrite(linen.Module):
        @linen.compact
        def __call__(self, x):
            count = self.variable("state", "count", lambda: jnp.zeros(()))
            count.value += 1
            return x

    wrong = WrongWrite()
    wrong_vars = wrong.init(jax.random.key(0), x)  # init may write: every collection is mutable
    try:
        wrong.apply(wrong_vars, x)  # no mutable=["state"]
        raise AssertionError("linen allowed a write to an immutable collection")
    except flax.errors.ModifyScopeVariableError as error:
        assert "immutable" in str(error)
    print("flax linen", flax.__version__, "ok")

    from flax import nnx

    class NnxModel(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(2, 16, rngs=rngs)
            self.bn = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)  # mean, var: nnx.BatchStat
            self.table = nnx.Variable(jax.random.normal(rngs.params(), (10, 16)))
            self.out = nnx.Linear(16, 3, rngs=rngs)

        def __call__(self, x, ids):
            return self.out(nnx.relu(self.bn(self.fc(x))) + self.table[...][ids])

    model = NnxModel(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    grads = nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(
        m(x, ids), y).mean())(model)  # wrt nnx.Param by default
    assert "table" not in nnx.to_pure_dict(grads)
    optimizer.update(model, grads)
    model.table[...] = jnp.zeros((10, 16))  # a wrong write: NNX does not object
    print("flax nnx", flax.__version__, "ok")

if have("equinox"):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    class EqxModel(eqx.Module):
        fc: eqx.nn.Linear
        bn: eqx.nn.BatchNorm
        table: jax.Array  # a plain array field: trainable unless filtered out
        out: eqx.nn.Linear

        def __init__(self, key):
            k1, k2, k3 = jax.random.split(key, 3)
            self.fc = eqx.nn.Linear(2, 16, key=k1)
            self.bn = eqx.nn.BatchNorm(16, axis_name="batch", momentum=0.9, mode="ema")
            self.table = jax.random.normal(k2, (10, 16))
            self.out = eqx.nn.Linear(16, 3, key=k3)

        def __call__(self, x, i, state):  # one example; vmap gives the batch
            h, state = self.bn(self.fc(x), state)
            return self.out(jax.nn.relu(h) + self.table[i]), state

    model, state = eqx.nn.make_with_state(EqxModel)(jax.random.key(0))
    x, ids, y = jnp.ones((4, 2)), jnp.array([0, 3, 3, 9]), jnp.array([0, 1, 2, 1])

    @eqx.filter_grad(has_aux=True)
    def grads_of(model, state):
        batched = jax.vmap(model, axis_name="batch", in_axes=(0, 0, None), out_axes=(0, None))
        logits, state = batched(x, ids, state)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), y]), state

    grads, state = grads_of(model, state)
    assert jnp.any(grads.table != 0)  # filter_grad differentiates the "fixed" table
    try:
        model.table = jnp.zeros((10, 16))  # modules are frozen dataclasses
        raise AssertionError("equinox allowed an assignment")
    except AttributeError:  # dataclasses.FrozenInstanceError is an AttributeError
        pass
    print("equinox", eqx.__version__, "ok")
