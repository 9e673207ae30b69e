"""OpenCLIP's SigLIP models (a `CustomTextCLIP` with a timm SigLIP image tower): a random one, saved as OpenCLIP's
Hugging Face repositories hold them (open_clip_config.json, weights, the transformers tokenizer files), must
tokenize and embed as `open_clip.create_model_and_transforms("local-dir:…")` and `open_clip.get_tokenizer` do. The
image tower is a tiny timm ViT registered here under a SigLIP-style name; the table of the real timm names is
checked against timm itself."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import sentencepiece as spm
import tokenizers

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")
from safetensors.numpy import load_file  # noqa: E402
from safetensors.numpy import save_file as save_numpy  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from mmjax.commands.convert import exporter  # noqa: E402
from mmjax.convert import checks, hf_siglip, open_clip_siglip  # noqa: E402
from mmjax.convert.checks import expected_shapes  # noqa: E402
from mmjax.data.open_clip_hf_tokenizer import OpenClipHfTokenizer  # noqa: E402
from mmjax.data.tokenizer_record import load_tokenizer, save_tokenizer  # noqa: E402
from mmjax.data.tokenizers import Tokenizer  # noqa: E402
from mmjax.pretrained import load_pretrained  # noqa: E402
from test_convert_clip import _open_clip_reference  # noqa: E402
from test_convert_siglip import _assert_same_direction, _images, train_t5_spiece  # noqa: E402
from test_convert_siglip2 import train_gemma_spm  # noqa: E402

TINY = "vit_mmjaxtest_patch8_siglip_32"
WIDTH, CONTEXT = 32, 12
TEXTS = ["a photo of a cat", "A DOG, running!", "", "zebra " * 20, "the bird's nest; über café?", "a &amp; b",
         "snake_case_words   and\ttabs", "naïve café 3.14 o'clock 🐱", "(parenthesised) [bracketed] {braced}"]


@pytest.fixture(scope="module")
def spiece_path(tmp_path_factory):
    return train_t5_spiece(tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def gemma_spm(tmp_path_factory):
    return train_gemma_spm(tmp_path_factory.mktemp("gemma"))


def _register_tiny_timm_vit(act_layer: str) -> str:
    """A 2-layer, 32-wide timm SigLIP-style ViT (MAP head, no class token) for 32 px images of 8 px patches."""
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    name = f"{TINY}_{act_layer}"
    if name not in timm.list_models(name):
        def build(pretrained=False, **kwargs):
            kwargs = {key: value for key, value in kwargs.items() if not key.startswith("pretrained_cfg")
                      and key != "cache_dir"}
            return VisionTransformer(img_size=32, patch_size=8, embed_dim=WIDTH, depth=2, num_heads=2, mlp_ratio=2,
                                     class_token=False, act_layer=act_layer, **kwargs)
        build.__name__ = name
        register_model(build)
    return name


def _open_clip_siglip_dir(path, monkeypatch, *, gemma_model=None, spiece=None, text_act=None, vision_act="gelu",
                          t5_pad="</s>", seed=0):
    """An OpenCLIP SigLIP directory with random (perturbed) weights and the tokenizer OpenCLIP saves."""
    name = _register_tiny_timm_vit("gelu_tanh" if vision_act == "gelu_tanh" else "gelu")
    monkeypatch.setitem(open_clip_siglip.TIMM_SIGLIP_VITS, name, (WIDTH, 2, 2, 64, 8, 32, vision_act))
    vocab = 420 if gemma_model else 320
    text_cfg = dict(context_length=CONTEXT, vocab_size=vocab, hf_tokenizer_name="timm/tiny",
                    tokenizer_kwargs={"clean": "canonicalize"}, width=WIDTH, heads=2, layers=2, mlp_ratio=2.0,
                    no_causal_mask=True, proj_bias=True, pool_type="last", norm_kwargs={"eps": 1e-6})
    if text_act:
        text_cfg["act_kwargs"] = {"approximate": text_act}
    model_cfg = dict(embed_dim=WIDTH, init_logit_bias=-10, custom_text=True, text_cfg=text_cfg,
                     vision_cfg=dict(image_size=32, timm_model_name=name, timm_model_pretrained=False,
                                     timm_pool="map", timm_proj="none"))
    torch.manual_seed(seed)
    model = open_clip.model.CustomTextCLIP(**{k: v for k, v in model_cfg.items() if k != "custom_text"})
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn_like(param))
    os.makedirs(path)
    preprocess_cfg = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "squash"}
    with open(os.path.join(path, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, f)
    save_file(model.state_dict(), os.path.join(path, "open_clip_model.safetensors"))
    model_file = gemma_model or spiece
    source = os.path.join(os.path.dirname(path), "tokenizer_source")
    os.makedirs(source, exist_ok=True)
    shutil.copy(model_file, os.path.join(source, "tokenizer.model" if gemma_model else "spiece.model"))
    if gemma_model:  # as OpenCLIP's SigLipTokenizer("gemma") makes and saves SigLIP 2's
        tokenizer = transformers.GemmaTokenizer.from_pretrained(source, add_bos_token=False, add_eos_token=True,
                                                                padding_side="right")
    else:  # SigLipTokenizer("c4-en"): T5's, padded with </s>
        tokenizer = transformers.T5Tokenizer.from_pretrained(source, extra_ids=0, pad_token=t5_pad)
    tokenizer.save_pretrained(path)
    return str(path)


def _edit_json(file, **changes):
    with open(file) as f:
        value = json.load(f)
    with open(file, "w") as f:
        json.dump({**value, **changes}, f)


@pytest.mark.parametrize("vocabulary, vision_act, text_act", [
    ("t5", "gelu", None),  # SigLIP: exact GELU in both towers
    ("gemma", "gelu_tanh", "tanh"),  # SigLIP 2 So400m/16: tanh GELU in both
    ("gemma", "gelu", "tanh"),  # SigLIP 2 B/16, L/16, So400m/14: an exact-GELU timm tower, a tanh-GELU text tower
])
def test_an_open_clip_siglip_tokenizes_and_embeds_as_open_clip(vocabulary, vision_act, text_act, spiece_path,
                                                                gemma_spm, monkeypatch, tmp_path):
    gemma = vocabulary == "gemma"
    path = _open_clip_siglip_dir(tmp_path / "model", monkeypatch, gemma_model=gemma_spm[0] if gemma else None,
                                 spiece=spiece_path, text_act=text_act, vision_act=vision_act)
    images = _images()
    image_ref, text_ref, ids_ref, model = _open_clip_reference(path, images, TEXTS)
    pieces = spm.SentencePieceProcessor(model_file=gemma_spm[0] if gemma else spiece_path)
    first = pieces.encode("a photo of a cat")[:CONTEXT - 1] + [pieces.piece_to_id("<eos>" if gemma else "</s>")]
    assert ids_ref[0, :len(first)].tolist() == first  # the reference tokenizer is the SentencePiece model's
    pretrained = load_pretrained(path)
    assert isinstance(pretrained.tokenizer, OpenClipHfTokenizer)
    np.testing.assert_array_equal(pretrained.tokenizer(TEXTS), ids_ref)
    for ours, reference in [(pretrained.encode_image(images), image_ref), (pretrained.encode_text(TEXTS), text_ref)]:
        _assert_same_direction(ours, reference)
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)
    assert pretrained.config.options.activation == vision_act
    assert pretrained.config.text_options.activation == ("gelu_tanh" if text_act else "gelu")
    assert pretrained.logit_scale == pytest.approx(model.logit_scale.item(), rel=1e-6)
    assert float(pretrained.params["logit_bias"]) == pytest.approx(model.logit_bias.item(), rel=1e-6)



def _as_transformers_4_writes_t5(tokenizer_file):
    """T5's tokenizer.json as transformers 4 wrote it (the Hub's files): the character map then runs of spaces
    collapsed, one Metaspace; transformers 5 rebuilds its own pre-tokenizer from the class."""
    with open(tokenizer_file) as f:
        tokenizer_json = json.load(f)
    charsmap = tokenizer_json["normalizer"]["precompiled_charsmap"]
    tokenizer_json["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Precompiled", "precompiled_charsmap": charsmap},
        {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]}
    tokenizer_json["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first",
                                       "split": True}
    with open(tokenizer_file, "w") as f:
        json.dump(tokenizer_json, f)


@pytest.mark.parametrize("vocabulary", ["t5", "t5-transformers-4", "gemma"])
def test_special_tokens_in_texts_and_files_transformers_4_wrote_give_open_clips_ids(vocabulary, spiece_path,
                                                                                    gemma_spm, monkeypatch, tmp_path):
    gemma = vocabulary == "gemma"
    path = _open_clip_siglip_dir(tmp_path / "model", monkeypatch, gemma_model=gemma_spm[0] if gemma else None,
                                 spiece=spiece_path, text_act="tanh" if gemma else None,
                                 vision_act="gelu_tanh" if gemma else "gelu", t5_pad="<pad>")
    if vocabulary == "t5-transformers-4":
        _as_transformers_4_writes_t5(os.path.join(path, "tokenizer.json"))
    texts = TEXTS + ["a </s> b", "a</s>b", "<eos> <pad> <unk> <bos>", "  A  Cat  ", "Ärger_über_CAFÉ", "x" * 40]
    np.testing.assert_array_equal(load_pretrained(path).tokenizer(texts),
                                  open_clip.get_tokenizer("local-dir:" + path)(texts).numpy())


def test_tokenizer_files_that_transformers_reads_otherwise_are_refused_or_followed(spiece_path, gemma_spm,
                                                                                  monkeypatch, tmp_path):
    """What transformers' AutoTokenizer does with the files: a Gemma pads on the left unless its
    tokenizer_config.json says right; the tokenizer.json's post-processor decides what is added around a text,
    whatever add_bos_token / add_eos_token say."""
    path = _open_clip_siglip_dir(tmp_path / "gemma", monkeypatch, gemma_model=gemma_spm[0], text_act="tanh",
                                 vision_act="gelu_tanh")
    config_file, tokenizer_file = (os.path.join(path, name) for name in ("tokenizer_config.json", "tokenizer.json"))
    with open(config_file) as f:
        config = json.load(f)
    with open(tokenizer_file) as f:
        tokenizer_json = json.load(f)

    def write(config_changes, post_processor=None):
        with open(config_file, "w") as f:
            json.dump({key: value for key, value in {**config, **config_changes}.items() if value is not None}, f)
        with open(tokenizer_file, "w") as f:
            json.dump({**tokenizer_json, "post_processor": post_processor or tokenizer_json["post_processor"]}, f)

    for changes, message in [({"padding_side": None}, "padding_side 'left' is not supported"),
                             ({"truncation_side": "left"}, "truncation_side 'left' is not supported"),
                             ({"tokenizer_class": "Siglip2Tokenizer"}, "tokenizer_class 'Siglip2Tokenizer'"),
                             ({"eos_token": {"special": True}}, "eos_token {'special': True} is not a token"),
                             ({"tokenizer_class": "PreTrainedTokenizerFast", "padding_side": "right",
                               "pad_token": None}, "pad_token is missing .PreTrainedTokenizerFast then has none"),
                             ({"pad_token": "null"}, "pad_token is null .GemmaTokenizer then has none")]:
        write(changes)
        if changes.get("pad_token") == "null":  # written as JSON null, which transformers reads as no token
            _edit_json(config_file, pad_token=None)
        with pytest.raises(ValueError, match=message) as error:
            load_pretrained(path)
        assert str(error.value).startswith(config_file) and "\n" not in str(error.value)
    bos_only = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                                                         {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}}}
    write({"add_bos_token": False, "add_eos_token": True}, bos_only)
    assert open_clip.get_tokenizer("local-dir:" + path)(["a"])[0, 0] == 2  # <bos> first: the file decided
    with pytest.raises(ValueError, match=r"post-processor makes 'a' \['<bos>'"):
        load_pretrained(path)
    bos_and_eos = dict(bos_only, single=[*bos_only["single"], {"SpecialToken": {"id": "<eos>", "type_id": 0}}],
                       special_tokens={**bos_only["special_tokens"],
                                       "<eos>": {"id": "<eos>", "ids": [1], "tokens": ["<eos>"]}})
    write({}, bos_and_eos)
    with pytest.raises(ValueError, match=r"post-processor makes 'a' \['<bos>', .*'<eos>'\]"):
        load_pretrained(path)
    # a file saved after use keeps its last padding and truncation: transformers pads as asked, and so does mmjax
    backend = tokenizers.Tokenizer.from_str(json.dumps(tokenizer_json))
    backend.enable_padding(pad_id=0, pad_token="<pad>", length=5)
    backend.enable_truncation(5)
    write({})
    backend.save(tokenizer_file)
    np.testing.assert_array_equal(load_pretrained(path).tokenizer(TEXTS),
                                  open_clip.get_tokenizer("local-dir:" + path)(TEXTS).numpy())
    # a side the config leaves out is the file's: a T5 whose tokenizer.json pads on the left pads there
    t5 = _open_clip_siglip_dir(tmp_path / "t5", monkeypatch, spiece=spiece_path, t5_pad="<pad>")
    backend = tokenizers.Tokenizer.from_file(os.path.join(t5, "tokenizer.json"))
    backend.enable_padding(direction="left", pad_id=0, pad_token="<pad>")
    backend.save(os.path.join(t5, "tokenizer.json"))
    with open(os.path.join(t5, "tokenizer_config.json")) as f:
        t5_config = {key: value for key, value in json.load(f).items() if key != "padding_side"}
    with open(os.path.join(t5, "tokenizer_config.json"), "w") as f:
        json.dump(t5_config, f)
    assert open_clip.get_tokenizer("local-dir:" + t5)(["a"])[0, 0] == 0  # OpenCLIP pads it on the left
    with pytest.raises(ValueError, match="padding_side 'left' is not supported"):
        load_pretrained(t5)


def test_the_timm_siglip_table_is_timms(monkeypatch):
    """Each entry as timm builds the model (on the meta device: shapes only): width, depth, heads, MLP, patch,
    image size and activation, and what every entry shares (no class token, no pre-norm, a biased patch
    embedding, LayerNorm eps 1e-6, a MAP head with the blocks' MLP and activation)."""
    activations = {("GELU", "none"): "gelu", ("GELUTanh", None): "gelu_tanh", ("GELU", "tanh"): "gelu_tanh"}
    for name, spec in open_clip_siglip.TIMM_SIGLIP_VITS.items():
        with torch.device("meta"):
            vit = timm.create_model(name, num_classes=0, global_pool="map")
        block, act = vit.blocks[0], vit.blocks[0].mlp.act
        built = (vit.embed_dim, len(vit.blocks), block.attn.num_heads, block.mlp.fc1.out_features,
                 vit.patch_embed.patch_size[0], vit.patch_embed.img_size[0],
                 activations[(type(act).__name__, getattr(act, "approximate", None))])
        assert built == spec, name
        assert vit.cls_token is None and isinstance(vit.norm_pre, torch.nn.Identity), name
        assert vit.patch_embed.proj.bias is not None and vit.norm.eps == 1e-6, name
        assert vit.attn_pool.mlp.fc1.out_features == spec[3] and type(vit.attn_pool.mlp.act) is type(act), name
        assert vit.attn_pool.latent_len == 1 and vit.attn_pool.num_heads == spec[2], name
        assert all(norm.eps == 1e-6 for norm in (block.norm1, block.norm2, vit.attn_pool.norm)), name
        assert block.attn.qkv.bias is not None and vit.attn_pool.q.bias is not None, name
        assert isinstance(block.attn.q_norm, torch.nn.Identity) and isinstance(block.ls1, torch.nn.Identity), name
    listed = {name for name in timm.list_models("vit_*_siglip_*") if "gap" not in name and TINY not in name}
    assert listed == set(open_clip_siglip.TIMM_SIGLIP_VITS)


def test_open_clips_own_siglip_configs_are_read_or_refused_in_one_line():
    """Every SigLIP config OpenCLIP ships is read or refused with its reason; three that are read give the model
    OpenCLIP builds (parameter count, on the meta device)."""
    outcomes = {}
    for name in open_clip.list_models():
        model_cfg = open_clip.get_model_config(name)
        if "siglip" not in (model_cfg.get("vision_cfg", {}).get("timm_model_name") or ""):
            continue
        try:
            outcomes[name] = open_clip_siglip.config_from_open_clip(model_cfg, name)
        except ValueError as error:
            assert "\n" not in str(error) and str(error).startswith(f"{name}: ")
            outcomes[name] = str(error)
    for name in ("ViT-B-16-SigLIP", "ViT-SO400M-14-SigLIP-384", "ViT-SO400M-16-SigLIP2-256"):
        model_cfg = open_clip.get_model_config(name)
        with torch.device("meta"):
            reference = open_clip.model.CustomTextCLIP(**{k: v for k, v in model_cfg.items() if k != "custom_text"})
        ours = sum(int(np.prod(shape)) for shape in expected_shapes(outcomes[name]).values())
        assert ours == sum(p.numel() for p in reference.parameters()), name
    read = sorted(name for name, outcome in outcomes.items() if not isinstance(outcome, str))
    assert len(read) == 25 and "ViT-gopt-16-SigLIP2-384" in read, read
    assert outcomes["ViT-B-16-SigLIP2"].options.activation == "gelu"
    assert outcomes["ViT-B-16-SigLIP2"].text_activation == "gelu_tanh"
    assert outcomes["ViT-SO400M-16-SigLIP2-256"].text_activation is None
    assert "text_cfg.hf_model_name='facebook/nllb-200-distilled-600M'" in outcomes["nllb-clip-base-siglip"]
    assert "text_cfg.proj_type='none'" in outcomes["ViT-SO400M-16-SigLIP-i18n-256"]


def test_what_mmjax_cannot_run_is_refused_in_one_line_naming_the_file(spiece_path, monkeypatch, tmp_path):
    path = _open_clip_siglip_dir(tmp_path / "model", monkeypatch, spiece=spiece_path)
    config_file = os.path.join(path, "open_clip_config.json")
    with open(config_file) as f:
        spec = json.load(f)

    def refused(edit, message):
        changed = json.loads(json.dumps(spec))
        edit(changed["model_cfg"])
        with open(config_file, "w") as f:
            json.dump(changed, f)
        with pytest.raises(ValueError) as error:
            load_pretrained(path)
        assert "\n" not in str(error.value) and str(error.value).startswith(config_file), error.value
        assert message in str(error.value)

    refused(lambda cfg: cfg["vision_cfg"].update(timm_model_name="convnext_base"),
            "vision_cfg.timm_model_name 'convnext_base' is not supported")
    refused(lambda cfg: cfg["vision_cfg"].update(timm_pool="avg"), "vision_cfg.timm_pool='avg'")
    refused(lambda cfg: cfg["vision_cfg"].update(image_size=64), "vision_cfg.image_size 64 is not the 32 px")
    refused(lambda cfg: cfg["text_cfg"].update(pool_type="argmax"), "text_cfg.pool_type='argmax'")
    refused(lambda cfg: cfg["text_cfg"].update(act_kwargs={"approximate": "sigmoid"}),
            "text_cfg.act_kwargs {'approximate': 'sigmoid'} is not supported")
    refused(lambda cfg: cfg["text_cfg"].pop("norm_kwargs"), "text_cfg.norm_kwargs None")
    refused(lambda cfg: cfg.pop("init_logit_bias"), "init_logit_bias is missing")
    refused(lambda cfg: cfg["text_cfg"].update(tokenizer_kwargs={"clean": "canonicalize", "strip_sep_token": True}),
            "text_cfg.tokenizer_kwargs")
    refused(lambda cfg: cfg["text_cfg"].update(tokenizer_kwargs="canonicalize"), "tokenizer_kwargs is not a JSON")
    refused(lambda cfg: cfg["text_cfg"].update(tokenizer_kwargs={"clean": "lower"}),
            "text_cfg.tokenizer_kwargs {'clean': 'lower'} is not supported (only {'clean': 'canonicalize'}")
    refused(lambda cfg: cfg["text_cfg"].pop("tokenizer_kwargs"), "text_cfg.tokenizer_kwargs None is not supported")
    refused(lambda cfg: cfg["text_cfg"].pop("hf_tokenizer_name"), "text_cfg.hf_tokenizer_name is empty")
    with open(config_file, "w") as f:
        json.dump(spec, f)
    weights = os.path.join(path, "open_clip_model.safetensors")
    tensors = load_file(weights)
    save_numpy({**tensors, "visual.trunk.attn_pool.kv.weight": tensors["visual.trunk.attn_pool.kv.weight"][:40]},
               weights)
    with pytest.raises(ValueError, match=r"tensor visual.trunk.attn_pool.kv.weight has shape \(40, 32\) but the "
                                         r"config needs \(64, 32\)"):
        load_pretrained(path)
    os.remove(os.path.join(path, "tokenizer.json"))
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        load_pretrained(path)


def test_mmjax_params_written_as_open_clip_tensors_and_read_back_are_bit_identical(spiece_path, monkeypatch, tmp_path):
    path = _open_clip_siglip_dir(tmp_path / "model", monkeypatch, spiece=spiece_path)
    pretrained = load_pretrained(path)
    tensors = open_clip_siglip.params_to_open_clip(pretrained.params, pretrained.config)
    original = load_file(os.path.join(path, "open_clip_model.safetensors"))
    assert sorted(tensors) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(tensors[key], value, err_msg=key)


@pytest.mark.parametrize("vocabulary", ["t5", "gemma"])
def test_an_open_clip_siglip_exports_to_open_clip_and_reads_back_bit_identical(vocabulary, spiece_path, gemma_spm,
                                                                               monkeypatch, tmp_path):
    """OpenCLIP → mmjax → OpenCLIP (`mmjax convert --to open_clip`): OpenCLIP's `local-dir:` loads the export with
    the source's tensors, bit for bit, and gives its token ids and embeddings; mmjax reads it back as it was. The
    Gemma model has an exact-GELU image tower and a tanh-GELU text tower."""
    gemma = vocabulary == "gemma"
    path = _open_clip_siglip_dir(tmp_path / "model", monkeypatch, gemma_model=gemma_spm[0] if gemma else None,
                                 spiece=spiece_path, text_act="tanh" if gemma else None)
    pretrained = load_pretrained(path)
    out = str(tmp_path / "exported")
    exporter(pretrained, "open_clip")(pretrained, out)
    written, original = (load_file(os.path.join(directory, "open_clip_model.safetensors")) for directory in (out, path))
    assert sorted(written) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(written[key], value, err_msg=key)
    images = _images()
    image_ref, text_ref, ids_ref, _ = _open_clip_reference(path, images, TEXTS)
    image_out, text_out, ids_out, _ = _open_clip_reference(out, images, TEXTS)
    np.testing.assert_array_equal(ids_out, ids_ref)
    np.testing.assert_allclose(image_out, image_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(text_out, text_ref, rtol=0, atol=1e-6)
    again = load_pretrained(out)
    assert again.config == pretrained.config and again.preprocess == pretrained.preprocess
    for key, value in checks.flatten(pretrained.params).items():
        np.testing.assert_array_equal(checks.flatten(again.params)[key], value, err_msg=key)
    np.testing.assert_array_equal(again.tokenizer(TEXTS), ids_ref)


def test_what_open_clip_cannot_build_is_not_exported_to_it(spiece_path, monkeypatch, tmp_path):
    path = _open_clip_siglip_dir(tmp_path / "model", monkeypatch, spiece=spiece_path)
    pretrained = load_pretrained(path)
    config = pretrained.config
    for changed, message in [
            (dict(tokenizer=Tokenizer.for_synthetic(CONTEXT)), "its tokenizer is a Tokenizer, not OpenCLIP's"),
            (dict(config=dataclasses.replace(config, vision=dataclasses.replace(config.vision, depth=3))),
             r"its image tower \(width 32, depth 3, 2 heads, MLP 64, 8 px patches, 32 px, gelu\) is none of timm's"),
            (dict(config=dataclasses.replace(config, text_activation="quick_gelu")),
             "its text tower's activation is 'quick_gelu'"),
            (dict(config=dataclasses.replace(config, options=dataclasses.replace(config.options, norm_eps=1e-5))),
             "its LayerNorm eps is 1e-05, timm's 1e-06"),
            (dict(config=dataclasses.replace(config, text=dataclasses.replace(config.text, pool="map"))),
             "its text pooling is 'map'")]:
        with pytest.raises(ValueError, match=f"^cannot export as an OpenCLIP SigLIP: {message}"):
            open_clip_siglip.export(dataclasses.replace(pretrained, **changed), str(tmp_path / "out"))
        assert not (tmp_path / "out").exists()


def test_the_tokenizer_survives_a_runs_record_and_an_export_that_would_lose_its_clean_up_is_refused(
        spiece_path, monkeypatch, tmp_path):
    path = _open_clip_siglip_dir(tmp_path / "model", monkeypatch, spiece=spiece_path)
    pretrained = load_pretrained(path)
    description = save_tokenizer(pretrained.tokenizer, str(tmp_path))
    recorded = load_tokenizer(str(tmp_path), json.loads(json.dumps(description)))
    assert description["kind"] == "open_clip_hf" and description["open_clip_clean"] == "canonicalize"
    np.testing.assert_array_equal(recorded(TEXTS), open_clip.get_tokenizer("local-dir:" + path)(TEXTS).numpy())
    with pytest.raises(ValueError, match=r"^the open_clip_hf tokenizer's 'open_clip_clean' is 'fancy', not one of"):
        load_tokenizer(str(tmp_path), {**description, "open_clip_clean": "fancy"})
    with pytest.raises(ValueError, match="runs OpenCLIP's text clean-up .clean='canonicalize'. before its "
                                         "tokenizer.json, which no transformers SigLIP tokenizer reproduces; use "
                                         "--to open_clip"):
        hf_siglip.export(pretrained, str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="cannot be saved as"):
        pretrained.tokenizer.save(str(tmp_path / "tokenizer.json"))
    assert not os.path.exists(tmp_path / "hf")


def test_from_the_hub_the_tokenizer_comes_from_the_repository_hf_tokenizer_name_names(spiece_path, monkeypatch,
                                                                                       tmp_path, fake_hub):
    """As OpenCLIP's `hf-hub:` reads it: `timm/ViT-L-16-SigLIP-256` names `timm/ViT-B-16-SigLIP`'s tokenizer."""
    model = _open_clip_siglip_dir(tmp_path / "hub" / "model", monkeypatch, spiece=spiece_path)
    expected = open_clip.get_tokenizer("local-dir:" + model)(TEXTS).numpy()
    os.makedirs(tmp_path / "hub" / "tok")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.move(os.path.join(model, name), tmp_path / "hub" / "tok" / name)
    config_file = os.path.join(model, "open_clip_config.json")
    with open(config_file) as f:
        spec = json.load(f)
    spec["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = "fake/tok"
    with open(config_file, "w") as f:
        json.dump(spec, f)
    pretrained = load_pretrained("hf:fake/model")
    np.testing.assert_array_equal(pretrained.tokenizer(TEXTS), expected)
    assert fake_hub[1] == ["*.json"]  # the tokenizer's repository: its JSON files alone


def test_from_the_hub_a_refused_tokenizer_stops_the_load_before_the_weights_download(spiece_path, monkeypatch,
                                                                                     tmp_path, fake_hub):
    """`hf_tokenizer_name` naming the model's own repository (the usual case): nothing more to fetch."""
    model = _open_clip_siglip_dir(tmp_path / "hub" / "model", monkeypatch, spiece=spiece_path)
    spec_file, config_file = (os.path.join(model, name) for name in ("open_clip_config.json", "tokenizer_config.json"))
    with open(spec_file) as f:
        spec = json.load(f)
    spec["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = "fake/model"
    _edit_json(spec_file, **spec)
    _edit_json(config_file, padding_side="left")
    with pytest.raises(ValueError, match="padding_side 'left' is not supported"):
        load_pretrained("hf:fake/model")
    assert fake_hub == [["*.json"]]  # the weights were never asked for
    _edit_json(config_file, padding_side="right")
    fake_hub.clear()
    np.testing.assert_array_equal(load_pretrained("hf:fake/model").tokenizer(TEXTS),
                                  open_clip.get_tokenizer("local-dir:" + model)(TEXTS).numpy())
    assert len(fake_hub) == 2 and fake_hub[0] == ["*.json"] and "*.safetensors" in fake_hub[1]
