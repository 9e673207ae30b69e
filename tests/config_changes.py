"""`with_changes`: a config with dotted keys set, as tests change the configs of `configs/`."""


def with_changes(config, changes: dict):
    """`config` with each `"section.name": value` of `changes` set in place; returns `config`."""
    for key, value in changes.items():
        parent, _, name = key.rpartition(".")
        (config[parent] if parent else config)[name] = value
    return config
