"""--grid SPEC and --sample-prompts: parsing, bounds, refusals, JSON round trips."""

from __future__ import annotations

import pytest

from kohyawrap.errors import UsageError
from kohyawrap.evaluate.options import DEFAULT_STRENGTHS, GridOptions, parse_grid
from kohyawrap.evaluate.prompts import (
    PromptDefaults,
    completed,
    concept_prompts,
    concepts_from_folders,
    defaults_from,
    join_line,
    read_prompt_file,
    split_line,
    training_prompts,
)


def test_parse_grid_lists_and_keys_share_commas() -> None:
    options = parse_grid("epochs=10,6,8,strengths=1,0,0.7,seeds=3,batch=2")
    assert options.choice == "listed"
    assert options.epochs == (6, 8, 10)
    assert options.strengths == (0.0, 0.7, 1.0)
    assert options.seed_values == (1, 2, 3)
    assert options.batch_size == 2
    assert options.enabled


def test_parse_grid_keeps_what_is_not_given() -> None:
    options = parse_grid("seeds=2")
    assert options.choice == "auto" and options.strengths == DEFAULT_STRENGTHS
    assert parse_grid("epochs=all").choice == "all"
    assert parse_grid(" epochs = auto ; seeds = 4 ").seeds == 4


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("epoch=3", "unknown key"),
        ("3,4", "has no key"),
        ("seeds=1,2", "a count"),
        ("seeds=0", "1..20"),
        ("seeds=999999", "1..20"),
        ("strengths=abc", "not a number"),
        ("strengths=nan", "outside"),
        ("strengths=9", "outside"),
        ("epochs=0", "1..100000"),
        ("epochs=x", "whole number"),
        ("seeds=", "no value"),
        ("seeds=2,seeds=3", "twice"),
        ("strengths=" + ",".join(str(i / 10) for i in range(13)), "at most 12"),
    ],
)
def test_parse_grid_refuses_with_a_reason(spec: str, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        parse_grid(spec)


def test_grid_options_round_trip_and_old_plans_have_none() -> None:
    options = parse_grid("epochs=2,4,strengths=0,1,seeds=2")
    options = GridOptions(**{**options.__dict__, "prompts": ("柴犬 in snow --n blurry",)})
    assert GridOptions.from_json(options.to_json()) == options
    assert GridOptions.from_json(None) == GridOptions(enabled=False)


def test_prompt_lines_split_like_sd_scripts() -> None:
    text, options = split_line("a photo of 柴犬 --n low quality, blurry --w 512 --H 768 --d 3")
    assert text == "a photo of 柴犬"
    assert options == (("n", "low quality, blurry"), ("w", "512"), ("h", "768"), ("d", "3"))
    assert split_line(join_line(text, options)) == (text, options)


def test_completed_keeps_the_users_size_and_drops_seed_and_multiplier() -> None:
    defaults = PromptDefaults("lowres", 512, 512, 28, 7.0)
    line = completed("cat --w 768 --d 9 --am 0.3 --n ugly", defaults)
    assert split_line(line) == ("cat", (("w", "768"), ("n", "ugly"), ("h", "512"), ("s", "28"),
                                        ("l", "7")))  # fmt: skip


def test_read_prompt_file_skips_comments_and_refuses_what_breaks_the_grid() -> None:
    lines = read_prompt_file("# mine\n\n  a cat --w 512\n一只柴犬 --n blurry\n", "p.txt")
    assert lines == ("a cat --w 512", "一只柴犬 --n blurry")
    with pytest.raises(UsageError, match="variants"):
        read_prompt_file("a {red|blue} cat\n", "p.txt")
    with pytest.raises(UsageError, match="no prompt"):
        read_prompt_file(" --n only options\n", "p.txt")
    with pytest.raises(UsageError, match="no prompts"):
        read_prompt_file("# nothing\n\n", "p.txt")
    with pytest.raises(UsageError, match="at most 20"):
        read_prompt_file("cat\n" * 21, "p.txt")
    with pytest.raises(UsageError, match="control"):
        read_prompt_file("cat\x1b[31m\n", "p.txt")
    with pytest.raises(UsageError) as err:
        read_prompt_file("ok\n" + "x" * 1001 + "\n", "p.txt")
    assert err.value.where == "p.txt:2"


def test_concepts_from_folder_names_split_trigger_and_class() -> None:
    found = concepts_from_folders(["sks dog", "ohwx 柴犬", "solo"], reg_classes=["dog"])
    assert [(c.phrase, c.trigger, c.class_word) for c in found] == [
        ("sks dog", "sks", "dog"),
        ("ohwx 柴犬", "ohwx", "柴犬"),
        ("solo", "solo", ""),
    ]
    # " --" in a folder name would become an option of the prompt line: it is dropped.
    (hostile,) = concepts_from_folders(['sks "dog" $(touch pwned) --n x'])
    assert " --" not in concept_prompts([hostile])[0]
    assert concept_prompts(found) == (
        "a photo of sks dog",
        "sks dog, outdoors, natural light",
        "a photo of ohwx 柴犬",
        "ohwx 柴犬, outdoors, natural light",
        "a photo of solo",
        "solo, outdoors, natural light",
    )


def test_training_prompts_take_the_rendered_options_and_number_the_seeds() -> None:
    rendered = "# header\na photo of x --n bad --w 640 --h 512 --d 1 --l 6 --s 20\n"
    assert defaults_from(rendered, 1, 1) == PromptDefaults("bad", 640, 512, 20, 6.0)
    text = training_prompts(rendered, ["柴犬 --d 42", "cat --w 256"], "mine")
    lines = text.splitlines()
    assert lines[0] == "# mine"
    assert split_line(lines[1])[1] == (("d", "42"), ("n", "bad"), ("w", "640"), ("h", "512"),
                                       ("s", "20"), ("l", "6"))  # fmt: skip
    assert lines[2].endswith(" --d 2") and "--w 256" in lines[2]
