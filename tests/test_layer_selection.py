"""``select_layers``: exact names and explicit patterns, matched on dot-separated components, never as substrings."""

import re

import pytest

from magic_remover.attention_processors import attention_layer_names, select_layers

# shaped like a deep UNet's processor names: block 1 and block 10, attention 0 and 01 side by side
NAMES = [
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor",
    "down_blocks.10.attentions.0.transformer_blocks.0.attn2.processor",
    "up_blocks.1.attentions.01.transformer_blocks.0.attn2.processor",
    "mid_block.attentions.0.transformer_blocks.0.attn2.processor",
]


def pick(selection):
    return [name.split(".attn2")[0] for name in select_layers(NAMES, selection, "attention_layers")]


def test_all_and_none_select_every_layer_in_order():
    assert select_layers(NAMES, "all", "attention_layers") == NAMES
    assert select_layers(NAMES, None, "attention_layers") == NAMES


def test_a_module_name_selects_exactly_its_own_layers():
    assert pick("down_blocks.1") == ["down_blocks.1.attentions.0.transformer_blocks.0"]  # not down_blocks.10
    assert pick("down_blocks.10") == ["down_blocks.10.attentions.0.transformer_blocks.0"]
    assert pick(["mid_block", "up_blocks"]) == [
        "up_blocks.1.attentions.01.transformer_blocks.0", "mid_block.attentions.0.transformer_blocks.0"]  # fmt: skip


def test_a_layer_name_is_accepted_with_and_without_the_processor_suffix():
    layer = "down_blocks.10.attentions.0.transformer_blocks.0.attn2"
    assert select_layers(NAMES, layer, "x") == select_layers(NAMES, layer + ".processor", "x") == [NAMES[1]]


def test_patterns_only_when_asked_and_only_on_component_boundaries():
    assert pick(r"re:attentions\.0") == [n.split(".attn2")[0] for n in (NAMES[0], NAMES[1], NAMES[3])]  # not .01
    assert pick(re.compile(r"down_blocks\.1")) == ["down_blocks.1.attentions.0.transformer_blocks.0"]
    assert pick(re.compile(r".*blocks\.1")) == [
        "down_blocks.1.attentions.0.transformer_blocks.0",
        "up_blocks.1.attentions.01.transformer_blocks.0",
    ]
    assert pick(re.compile("MID_BLOCK", re.IGNORECASE)) == ["mid_block.attentions.0.transformer_blocks.0"]
    with pytest.raises(ValueError, match="match none"):  # "blocks" starts inside "down_blocks": no match
        pick(r"re:blocks\.1")


@pytest.mark.parametrize("fragment", ["blocks.1", "down", "attn2", "down_blocks.1.attentions"[:-1], "all_layers"])
def test_a_fragment_that_is_no_exact_name_is_refused_with_examples(fragment):
    expected = rf"`attention_layers`: \[{re.escape(repr(fragment))}\].*such as .*down_blocks"
    with pytest.raises(ValueError, match=expected):
        pick(fragment)


@pytest.mark.parametrize("selection", [3, [], ["up_blocks", 3], {"up_blocks": 1}.values()])
def test_a_selection_of_the_wrong_type_is_a_type_error(selection):
    with pytest.raises(TypeError, match="`attention_layers`"):
        pick(selection)


def test_an_invalid_pattern_is_a_value_error():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        pick("re:(")


def test_the_real_unets_names_select_exactly(pipe):
    _, cross = attention_layer_names(pipe.unet)
    assert set(cross) <= set(pipe.unet.attn_processors)
    up = select_layers(cross, "up_blocks", "x")
    assert up and all(name.startswith("up_blocks.") for name in up)
    assert select_layers(cross, cross[0][: -len(".processor")], "x") == [cross[0]]
