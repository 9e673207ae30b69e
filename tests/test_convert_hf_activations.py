"""transformers' activation names map to mmjax activations that compute the same function."""

import numpy as np
import pytest

from mmjax.convert import hf_activations
from mmjax.models.layers import ACTIVATIONS

torch = pytest.importorskip("torch")
transformers_activations = pytest.importorskip("transformers.activations")

X = np.linspace(-6, 6, 241, dtype=np.float32)


@pytest.mark.parametrize("hf_name", sorted(hf_activations.FROM_HF))
def test_each_transformers_name_reads_as_the_same_function(hf_name):
    ours = np.asarray(ACTIVATIONS[hf_activations.from_hf(hf_name)](X))
    theirs = transformers_activations.ACT2FN[hf_name](torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-6)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_mmjax_activation_exports_as_the_same_function(name):
    theirs = transformers_activations.ACT2FN[hf_activations.TO_HF[name]](torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(np.asarray(ACTIVATIONS[name](X)), theirs, atol=2e-6)


@pytest.mark.parametrize("name", ["relu", "silu", None, ["gelu"]])
def test_other_names_are_refused_naming_the_key(name):
    with pytest.raises(ValueError, match=r"^activation_function .* is not one of \['gelu', 'gelu_fast'"):
        hf_activations.from_hf(name, "activation_function")
