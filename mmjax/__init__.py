"""mmjax: multimodal vision-language models in JAX/Flax."""
