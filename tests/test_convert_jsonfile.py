"""The JSON helpers the converters read tokenizer and model configs with."""

import pytest

from mmjax.convert.jsonfile import special_token


@pytest.mark.parametrize("config, expected", [
    ({}, "</s>"),
    ({"eos_token": None}, "</s>"),
    ({"eos_token": "<eos>"}, "<eos>"),
    ({"eos_token": {"content": "<eos>", "lstrip": False, "special": True, "__type": "AddedToken"}}, "<eos>"),
])
def test_special_token_reads_strings_and_added_tokens(config, expected):
    assert special_token(config, "eos_token", "</s>", "tokenizer_config.json") == expected


@pytest.mark.parametrize("value", [{"special": True}, 3, "", ["</s>"]])
def test_special_token_refuses_what_is_not_a_token_naming_the_file(value):
    with pytest.raises(ValueError, match=r"^dir/tokenizer_config.json: pad_token .* is not a token$"):
        special_token({"pad_token": value}, "pad_token", "<pad>", "dir/tokenizer_config.json")
