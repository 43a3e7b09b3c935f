"""The pure layout planner: names, repeats, captions and copy-or-convert decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from kohyawrap.dataset.imaging import Header
from kohyawrap.dataset.layout import (
    BuildOptions,
    ConceptInput,
    check_template,
    choose_repeats,
    concept_name,
    decide_action,
    fit,
    group_concepts,
    make_caption,
    plan_layout,
    render_template,
    safe_stem,
    unique_stem,
)
from kohyawrap.dataset.scan import SourceFolder, SourceImage
from kohyawrap.errors import UsageError

RGB_JPEG = Header(800, 600, "RGB", "JPEG")


def _image(name: str, header: Header | None = RGB_JPEG, caption: str | None = None) -> SourceImage:
    return SourceImage(Path("in") / name, header, None if header else "unreadable", None, caption)


def _folder(*images: SourceImage, path: str = "in") -> SourceFolder:
    return SourceFolder(Path(path), images)


@pytest.mark.parametrize(
    ("stem", "safe"),
    [
        ('my "best" $(rm -rf ~) shot', "my_best_rm_-rf_shot"),
        ("it's `whoami`; ls", "it_s_whoami_ls"),
        ("café 写真", "café_写真"),
        ("cafe\u0301", "café"),  # decomposed (macOS) -> composed
        ("...hidden", "hidden"),  # a leading dot would hide it from sd-scripts
        ("$$$", "image"),
        ("con", "_con"),  # reserved on Windows
        ("x" * 200, "x" * 60),
    ],
)
def test_safe_stem(stem: str, safe: str) -> None:
    assert safe_stem(stem) == safe


def test_unique_stem_is_case_insensitive_and_ordered() -> None:
    taken: set[str] = set()
    assert [unique_stem(s, taken) for s in ["a", "A", "a", "b"]] == ["a", "A-2", "a-3", "b"]


def test_concept_name_does_not_repeat_the_class() -> None:
    assert concept_name("sks dog", "dog") == "sks dog"
    assert concept_name("sks", "dog") == "sks dog"
    assert concept_name("ohwx", "") == "ohwx"
    assert concept_name("sks Golden Retriever", "golden retriever") == "sks Golden Retriever"


@pytest.mark.parametrize(
    ("images", "model", "repeats"),
    [(30, "sd15", 10), (20, "sd15", 15), (30, "sdxl", 3), (8, "sdxl", 12), (1000, "sd15", 1)],
)
def test_repeats_rule(images: int, model: str, repeats: int) -> None:
    # sd15: images × repeats ≈ 300 (middle of 200-400); sdxl ≈ 100.
    choice = choose_repeats(images, model, None)
    assert choice.repeats == repeats and choice.derived
    assert "Kohya Colab" in choice.rule and str(choice.per_epoch) in choice.rule


def test_explicit_and_reg_repeats() -> None:
    assert choose_repeats(30, "sd15", 7).repeats == 7
    assert choose_repeats(500, "sd15", None, is_reg=True).repeats == 1
    with pytest.raises(UsageError):
        choose_repeats(30, "sd15", 0)


def test_fit_never_upscales() -> None:
    assert fit((4000, 3000), 1024) == (1024, 768)
    assert fit((3000, 4000), 1024) == (768, 1024)
    assert fit((800, 600), 1024) == (800, 600)
    assert fit((4000, 3000), None) == (4000, 3000)


def test_decide_action() -> None:
    assert decide_action(Header(800, 600, "RGB", "JPEG"), 1024) == (
        "copy",
        (800, 600),
        "JPEG",
        ".jpg",
        (),
    )
    assert decide_action(Header(800, 600, "L", "PNG"), 1024)[0] == "copy"
    action, size, fmt, ext, reasons = decide_action(Header(4000, 3000, "RGB", "MPO", 6), 1024)
    assert (action, size, fmt, ext) == ("convert", (768, 1024), "JPEG", ".jpg")
    assert any("orientation 6" in r for r in reasons) and any("downscaled" in r for r in reasons)
    assert decide_action(Header(64, 64, "RGBA", "PNG"), 1024)[2:4] == ("PNG", ".png")
    assert decide_action(Header(64, 64, "RGB", "GIF"), 1024)[2:4] == ("PNG", ".png")
    assert decide_action(Header(64, 64, "RGB", "BMP"), 1024)[2:4] == ("BMP", ".bmp")


def test_templates() -> None:
    assert render_template("photo of {trigger}, {class}", "sks", "dog") == "photo of sks, dog"
    assert render_template("photo of {trigger}, {class}", "sks", "") == "photo of sks"
    assert render_template("photo of {concept}", "sks dog", "dog") == "photo of sks dog"
    with pytest.raises(UsageError, match="unknown field"):
        check_template("{trigger} {name}")
    with pytest.raises(UsageError):
        check_template("{trigger")


def test_captions_always_carry_the_trigger() -> None:
    concept = ConceptInput((), "sks dog", "dog")
    assert make_caption(_image("a.jpg", caption="a dog\n"), concept, "photo of {concept}") == (
        "sks dog, a dog",
        ["trigger_added"],
    )
    assert (
        make_caption(_image("a.jpg", caption="SKS Dog running"), concept, "x")[0]
        == "SKS Dog running"
    )
    assert make_caption(_image("a.jpg"), concept, "photo of {concept}") == (
        "photo of sks dog",
        ["template"],
    )
    caption, flags = make_caption(_image("a.jpg", caption="\nline one\nline two\n"), concept, "x")
    assert caption == "sks dog, line one" and "multiline" in flags
    assert make_caption(_image("a.jpg", caption=" \n"), concept, "{concept}")[1] == [
        "empty",
        "template",
    ]


def test_reg_captions_are_the_plain_class() -> None:
    reg = ConceptInput((), "", "dog", is_reg=True)
    assert make_caption(_image("r.jpg"), reg, "photo of {concept}") == ("dog", ["class_word"])
    assert make_caption(_image("r.jpg", caption="a brown dog"), reg, "x")[0] == "a brown dog"


def test_group_concepts_one_for_all_or_one_each() -> None:
    a, b = _folder(path="a"), _folder(path="b")
    one = group_concepts([a, b], ["sks dog"], ["dog"])
    assert len(one) == 1 and one[0].sources == (a, b)
    two = group_concepts([a, b], ["sks dog", "sks cat"], ["dog", "cat"], [5, 8])
    assert [(c.trigger, c.class_word, c.repeats) for c in two] == [
        ("sks dog", "dog", 5),
        ("sks cat", "cat", 8),
    ]
    with pytest.raises(UsageError, match="2 values of --class-word for 3"):
        group_concepts([a, b, _folder(path="c")], ["x"], ["dog", "cat"])
    with pytest.raises(UsageError, match="required"):
        group_concepts([a], [])


def test_plan_layout_names_collisions_and_skips() -> None:
    src = _folder(
        _image("a.jpg"),
        _image("A.png", Header(100, 100, "RGB", "PNG")),
        _image("my photo.JPEG"),
        _image("broken.jpg", header=None),
    )
    layout = plan_layout([ConceptInput((src,), "sks", "dog", 4)], BuildOptions("sd15", 1024))
    assert [c.folder for c in layout.concepts] == ["4_sks dog"]
    assert [op.dest for op in layout.images] == [
        "4_sks dog/a.jpg",
        "4_sks dog/A-2.png",
        "4_sks dog/my_photo.jpg",
    ]
    assert [op.caption_dest for op in layout.images][1] == "4_sks dog/A-2.txt"
    assert [s.source.name for s in layout.skipped] == ["broken.jpg"]
    assert {n.code for n in layout.notes} >= {"renamed", "skipped", "template"}


def test_plan_layout_reg_folder_and_caption_extension() -> None:
    train = ConceptInput((_folder(_image("a.jpg")),), "sks", "dog")
    reg = ConceptInput((_folder(_image("r.jpg"), path="reg_in"),), "", "dog", is_reg=True)
    layout = plan_layout([train, reg], BuildOptions("sdxl", 1024, caption_extension=".caption"))
    assert [c.folder for c in layout.concepts] == ["100_sks dog", "reg/1_dog"]
    assert layout.images[1].caption_dest == "reg/1_dog/r.caption"


@pytest.mark.parametrize("trigger", ["a/b", "..", "sks.", "x\ny", ""])
def test_bad_triggers_are_usage_errors(trigger: str) -> None:
    concept = ConceptInput((_folder(_image("a.jpg")),), trigger, "")
    with pytest.raises(UsageError):
        plan_layout([concept], BuildOptions("sd15", None))


def test_no_usable_images_is_an_error() -> None:
    concept = ConceptInput((_folder(_image("a.jpg", header=None)),), "sks", "")
    with pytest.raises(UsageError, match="no usable images"):
        plan_layout([concept], BuildOptions("sd15", None))


@pytest.mark.parametrize("ext", ["txt", ".jpg", ".", "./x"])
def test_bad_caption_extension(ext: str) -> None:
    with pytest.raises(UsageError, match="caption-extension"):
        plan_layout([], BuildOptions("sd15", None, caption_extension=ext))
