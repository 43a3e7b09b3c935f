"""The pure side of captioning: the WD14 tag list, choosing tags, composing the caption line,
planning which photos need a caption, and the review."""

from __future__ import annotations

from pathlib import Path

import pytest

from kohyawrap.dataset.caption import (
    MAX_CAPTION_CHARS,
    RawCaption,
    TagOptions,
    TagVocabulary,
    compose_caption,
    display_tag,
    parse_selected_tags,
    parse_tag_list,
    plan_captions,
    review_captions,
    select_tags,
)
from kohyawrap.dataset.scan import scan_sources
from kohyawrap.errors import DatasetError
from tests.fixtures.images import write_jpeg, write_png, write_zero_bytes
from tests.fixtures.wd14 import selected_tags_csv

VOCAB = TagVocabulary(
    names=(
        "general",
        "sensitive",
        "1girl",
        "long_hair",
        "^_^",
        "smile",
        "Long Hair",
        "hatsune_miku",
    ),
    categories=(9, 9, 0, 0, 0, 0, 0, 4),
)


def test_parse_selected_tags_reads_the_real_format() -> None:
    vocab = parse_selected_tags("\ufeff" + selected_tags_csv())
    assert vocab.names[:5] == ("general", "sensitive", "questionable", "explicit", "red_theme")
    assert vocab.categories[:4] == (9, 9, 9, 9)
    assert vocab.categories[-1] == 4
    assert len(vocab) == len(selected_tags_csv().splitlines()) - 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,tag,kind\n1,a,0\n", "header must start with tag_id,name,category"),
        ("", "header must start"),
        ("tag_id,name,category,count\n1,a,zero,3\n", "line 2"),
        ("tag_id,name,category,count\n", "empty"),
    ],
)
def test_parse_selected_tags_refuses_other_files(text: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message) as caught:
        parse_selected_tags(text, "repo/selected_tags.csv")
    assert caught.value.where == "repo/selected_tags.csv"


def test_select_tags_thresholds_order_and_ratings() -> None:
    scores = [0.99, 0.98, 0.90, 0.60, 0.34, 0.70, 0.10, 0.80]
    tags = select_tags(scores, VOCAB, TagOptions())
    # ratings never, general >= 0.35 by falling score, the character (0.80) below 0.85: not there
    assert tags == ("1girl", "smile", "long hair")
    with_character = select_tags(scores, VOCAB, TagOptions(character_threshold=0.75))
    assert with_character[0] == "hatsune miku"  # characters lead
    lower = select_tags(scores, VOCAB, TagOptions(general_threshold=0.3))
    assert lower == ("1girl", "smile", "long hair", "^_^")


def test_select_tags_dedupes_excludes_and_keeps_faces() -> None:
    scores = [0.0, 0.0, 0.9, 0.85, 0.7, 0.0, 0.8, 0.0]
    # "Long Hair" (0.8) is the same tag as long_hair (0.85): only the higher one stays
    assert select_tags(scores, VOCAB, TagOptions()) == ("1girl", "long hair", "^_^")
    kept = select_tags(scores, VOCAB, TagOptions(keep_underscores=True))
    assert kept == ("1girl", "long_hair", "^_^")
    excluded = select_tags(scores, VOCAB, TagOptions(exclude=parse_tag_list("LONG_HAIR, 1girl")))
    assert excluded == ("^_^",)


def test_select_tags_ties_keep_the_list_order_and_nan_is_dropped() -> None:
    scores = [0.0, 0.0, 0.5, 0.5, 0.5, float("nan"), 0.0, 0.0]
    assert select_tags(scores, VOCAB, TagOptions()) == ("1girl", "long hair", "^_^")


def test_select_tags_refuses_a_model_that_does_not_match_its_list() -> None:
    with pytest.raises(DatasetError, match="same tagger repo"):
        select_tags([0.5] * 3, VOCAB, TagOptions())


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5])
def test_thresholds_must_be_probabilities(value: float) -> None:
    with pytest.raises(DatasetError, match="--general-threshold"):
        TagOptions(general_threshold=value)


@pytest.mark.parametrize(
    ("name", "shown"),
    [("long_hair", "long hair"), ("^_^", "^_^"), ("(o)_(o)", "(o)_(o)"), ("0_0", "0_0"),
     ("+_+", "+_+"), ("sks_(robot)", "sks (robot)"), ("1girl", "1girl")],
)  # fmt: skip
def test_display_tag(name: str, shown: str) -> None:
    assert display_tag(name, keep_underscores=False) == shown
    assert display_tag(name, keep_underscores=True) == name


def test_compose_caption_puts_the_trigger_first() -> None:
    tags = RawCaption(tags=("1girl", "SKS Dog", "smile"))
    assert compose_caption(tags, "sks dog") == "sks dog, 1girl, smile"
    assert compose_caption(tags, None) == "1girl, SKS Dog, smile"
    assert compose_caption(RawCaption(tags=()), "sks dog") == "sks dog"
    text = RawCaption(text="  A red robot\nstands on a table.\n\nSecond paragraph. ")
    assert compose_caption(text, "sks robot") == (
        "sks robot, A red robot stands on a table. Second paragraph."
    )
    already = RawCaption(text="sks robot standing in the grass")
    assert compose_caption(already, "sks robot") == "sks robot standing in the grass"
    longer = RawCaption(text="sks robots everywhere")  # not the trigger as a whole word
    assert compose_caption(longer, "sks robot") == "sks robot, sks robots everywhere"
    assert compose_caption(RawCaption(text="中文 描述"), "小狗") == "小狗, 中文 描述"


def test_compose_caption_bounds_a_runaway_captioner() -> None:
    caption = compose_caption(RawCaption(text="word " * 5000), "t")
    assert len(caption) <= MAX_CAPTION_CHARS + len("t, ")
    assert "\n" not in caption


def _photos(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_jpeg(folder / "无字幕.jpg", seed=1)  # no caption
    write_jpeg(folder / "has.jpg", seed=2)
    (folder / "has.txt").write_text("my own words\n", encoding="utf-8")
    write_png(folder / "empty.png", seed=3)
    (folder / "empty.txt").write_text("  \n", encoding="utf-8")
    write_jpeg(folder / "other ext.jpg", seed=4)
    (folder / "other ext.caption").write_text("from another tool\n", encoding="utf-8")
    write_jpeg(folder / "blank other.jpg", seed=5)
    (folder / "blank other.caption").write_text("", encoding="utf-8")
    write_zero_bytes(folder / "broken.jpg")
    return folder


def test_plan_keeps_the_users_captions(tmp_path: Path) -> None:
    folder = _photos(tmp_path / "照片")
    plan = plan_captions(scan_sources(folder, ".txt"), ".txt", overwrite=False)
    by_name = {t.image.name: t for t in plan.tasks}
    assert by_name["无字幕.jpg"].action == "write"
    assert by_name["无字幕.jpg"].caption_path == folder / "无字幕.txt"
    assert by_name["has.jpg"].action == "keep"
    assert by_name["has.jpg"].existing == "my own words"
    assert by_name["empty.png"].action == "replace"  # an empty file: nothing to lose
    assert by_name["other ext.jpg"].action == "keep"
    assert by_name["other ext.jpg"].caption_path == folder / "other ext.caption"
    assert by_name["blank other.jpg"].action == "write"
    assert by_name["blank other.jpg"].caption_path == folder / "blank other.txt"
    assert by_name["broken.jpg"].action == "skip"
    assert "empty file" in by_name["broken.jpg"].reason
    assert [t.image.name for t in plan.todo] == ["blank other.jpg", "empty.png", "无字幕.jpg"]


def test_plan_with_overwrite(tmp_path: Path) -> None:
    folder = _photos(tmp_path / "photos")
    plan = plan_captions(scan_sources(folder, ".txt"), ".txt", overwrite=True)
    by_name = {t.image.name: t for t in plan.tasks}
    assert by_name["has.jpg"].action == "replace"
    assert by_name["other ext.jpg"].action == "write"  # .txt is read before .caption
    assert by_name["other ext.jpg"].caption_path.name == "other ext.txt"
    assert by_name["broken.jpg"].action == "skip"


def test_review_counts_tags_and_finds_missing_triggers(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    captions = {
        "a.jpg": "sks dog, 1girl, smile, smile",
        "b.jpg": "sks dog, 1girl, long_hair",
        "c.jpg": "1girl, Long Hair, outdoors",
        "d.jpg": None,
        "e.jpg": "\n",
        "狗.jpg": "小狗, 户外",
    }
    for seed, (name, caption) in enumerate(captions.items()):
        write_jpeg(folder / name, seed=seed)
        if caption is not None:
            (folder / name).with_suffix(".txt").write_text(caption, encoding="utf-8")
    review = review_captions(scan_sources(folder, ".txt"), "sks dog")
    counts = dict(review.tag_counts)
    assert counts["1girl"] == 3
    assert counts["smile"] == 1  # twice in one caption counts once
    assert counts["long_hair"] == 2  # long_hair and Long Hair are one tag
    assert review.tag_counts[0] == ("1girl", 3)
    assert review.without_trigger == (
        ("c.jpg", "1girl, Long Hair, outdoors"),
        ("狗.jpg", "小狗, 户外"),
    )
    assert review.missing == ("d.jpg",)
    assert review.empty == ("e.jpg",)
    assert review.captioned == 4
    data = review.to_json()
    assert data["tags"][0] == {"tag": "1girl", "count": 3}
    assert data["missing"] == ["d.jpg"]
