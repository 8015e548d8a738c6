"""Only W_V trained (finding 2: still globally optimal, the output being linear in W_V).
The same experiment as the main job, qk_frozen.py, under the name the paper's table uses."""

from configs import qk_frozen


def get_config(arg=None):
    return qk_frozen.get_config(arg)
