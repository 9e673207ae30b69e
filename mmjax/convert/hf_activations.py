"""transformers' activation names (`hidden_act`, GPT-2's `activation_function`) ↔ mmjax's
(`mmjax.models.layers.ACTIVATIONS`)."""

# gelu_pytorch_tanh, gelu_new and gelu_fast are the same tanh approximation of GELU, written three ways.
FROM_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
           "gelu_fast": "gelu_tanh"}
TO_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def from_hf(name, key: str = "hidden_act") -> str:
    """transformers' activation `name` (the value of `key`) → mmjax's; one-line ValueError if there is none."""
    if not isinstance(name, str) or name not in FROM_HF:
        raise ValueError(f"{key} {name!r} is not one of {sorted(FROM_HF)}")
    return FROM_HF[name]
