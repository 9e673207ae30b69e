"""Reading and writing the checkpoint formats people already have.

One module per format (`hf_clip`, `open_clip`, `hf_siglip`, `big_vision`), each with
`load(path, ...) -> Pretrained` and, where the format can be written, `export(pretrained, out_dir)`;
`hf_gpt2` loads a GPT-2 as a Flamingo's language model (`load(path, context_length) -> LanguageModel`).
Shared pieces: `tensors` (safe file I/O), `checks` (shape checks), `layout` (torch ↔ mmjax
parameter layouts) and `posemb` (position-table interpolation). Users call
`mmjax.load_pretrained` or `mmjax convert`; nothing here imports torch.
"""
