"""Which optax set-ups freeze a table kept in `params` (guide chapter 7, fix 3).

A table and a weight get the same gradient; after one step of each set-up, the table has
moved or not. `optax.masked(tx, mask)` applies `tx` only where the mask is true and passes
the other updates through unchanged: the table's raw gradient becomes its update, so it moves
(by the gradient itself, not even scaled by the learning rate). `optax.chain(tx,
optax.freeze(mask))`, and `optax.partition` with `optax.set_to_zero()` for the table, freeze it.

    python3 -m pip install optax      # brings jax
    python3 scripts/optax_frozen_table.py
"""

import jax.numpy as jnp
import optax

params = {"table": jnp.ones(3), "weight": jnp.ones(3)}
grads = {"table": jnp.full(3, 0.5), "weight": jnp.full(3, 0.5)}
tx = optax.adamw(0.1, weight_decay=0.1)
frozen = {"table": True, "weight": False}
trained = {"table": False, "weight": True}

setups = {
    "optax.masked(tx, trained)": optax.masked(tx, trained),
    "optax.chain(tx, optax.freeze(frozen))": optax.chain(tx, optax.freeze(frozen)),
    "optax.partition({'train': tx, 'frozen': set_to_zero()}, labels)": optax.partition(
        {"train": tx, "frozen": optax.set_to_zero()},
        {"table": "frozen", "weight": "train"},
    ),
}
moved = {}
for name, optimizer in setups.items():
    state = optimizer.init(params)
    updates, _ = optimizer.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    moved[name] = bool(jnp.any(new["table"] != params["table"]))
    weight_moved = bool(jnp.any(new["weight"] != params["weight"]))
    print(f"{name}: table {'moves' if moved[name] else 'frozen'}, weight "
          f"{'moves' if weight_moved else 'frozen'}")
    assert weight_moved, name
assert moved["optax.masked(tx, trained)"], "masked passes the table's gradient through"
assert not moved["optax.chain(tx, optax.freeze(frozen))"]
assert not moved["optax.partition({'train': tx, 'frozen': set_to_zero()}, labels)"]
print(f"optax {optax.__version__}: as guide chapter 7 says")
