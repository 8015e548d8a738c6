"""``jax.random.fold_in`` ids of a run's random streams, one per purpose.

Every seed's key is split by purpose with ``fold_in``, never by consuming one stream, so that
changing what is trained (the frozen set), the data or dropout never changes the initialisation.
The runner and any data set that rebuilds a run's initial model (the student-teacher task) use
these same ids.
"""

INIT = 0  # parameter initialisation
DROPOUT = 1  # dropout masks (folded in again with the step)
SHARED_INIT = 2  # matrices every seed shares (model.shared_init), from model.shared_init_seed


def shared_key(seed: int, matrix: str):
    """The key of matrix ``'Q'``, ``'K'`` or ``'V'`` when every seed shares it
    (``model.shared_init``): a function of ``seed`` (``model.shared_init_seed``) alone."""
    import jax

    key = jax.random.fold_in(jax.random.key(seed), SHARED_INIT)
    return jax.random.fold_in(key, "QKV".index(matrix))
