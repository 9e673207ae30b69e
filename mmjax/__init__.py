"""mmjax: multimodal vision-language models in JAX/Flax.

Subpackages: `models` (Flax modules and the size registry), `losses`
(contrastive losses and their sharded forms), `data` (tokenizers, synthetic
data, grain pipelines), `parallel` (mesh and logical-axis rules), `train`
(the trainer), `eval` (zero-shot and retrieval metrics).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`mmjax.load_pretrained` / `mmjax.Pretrained`, imported on first use so `import mmjax` stays cheap."""
    if name in ("load_pretrained", "Pretrained"):
        from mmjax import pretrained
        return getattr(pretrained, name)
    raise AttributeError(f"module 'mmjax' has no attribute {name!r}")
