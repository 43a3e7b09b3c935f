"""The effect check, contact sheets and the loss plot on real images made with pillow; the report
page's rule that nothing leaves its folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat

from kohyawrap.evaluate.chart import nice_ticks, text_chart
from kohyawrap.evaluate.drawing import Unreadable, draw_loss_plot, draw_sheet, open_rgb, thumbnail
from kohyawrap.evaluate.effect import (
    BARELY,
    EffectRow,
    Pair,
    compared_strength,
    distance,
    judge_effect,
)
from kohyawrap.evaluate.gridplan import Checkpoint, build_grid
from kohyawrap.evaluate.loss import LossCurve
from kohyawrap.evaluate.options import parse_grid
from kohyawrap.evaluate.page import external_references, render_page
from kohyawrap.evaluate.prompts import PromptDefaults
from kohyawrap.evaluate.sheets import contact_sheets, layout
from tests.fixtures.images import textured


def picture(
    path: Path, seed: int, *, stripes: float = 0.0, size: tuple[int, int] = (96, 128)
) -> Path:
    """A textured picture; ``stripes`` blends red stripes over it (what a LoRA would change)."""
    image = textured(size, seed)
    if stripes:
        overlay = image.copy()
        pen = ImageDraw.Draw(overlay)
        for y in range(0, size[1], 16):
            pen.rectangle((0, y, size[0], y + 7), fill=(220, 20, 20))
        image = Image.blend(image, overlay, stripes)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def test_distance_is_zero_for_the_same_picture_and_grows_with_the_change(tmp_path: Path) -> None:
    base = thumbnail(picture(tmp_path / "base.png", 1))
    same = thumbnail(picture(tmp_path / "same.png", 1))
    light = thumbnail(picture(tmp_path / "light.png", 1, stripes=0.1))
    strong = thumbnail(picture(tmp_path / "strong.png", 1, stripes=0.8))
    assert len(base) == 64 * 64
    assert distance(base, same) == 0
    assert 0 < distance(base, light) < distance(base, strong) <= 1
    black, white = bytes(64 * 64), bytes([255]) * (64 * 64)
    assert distance(black, white) == 1
    with pytest.raises(ValueError):
        distance(b"\x00", b"\x00\x00")


def test_judge_effect_reports_a_lora_that_changes_nothing() -> None:
    none = EffectRow("e1", "epoch 1", (Pair(0, 1, 0.001), Pair(0, 2, 0.004)))
    some = EffectRow("e2", "epoch 2", (Pair(0, 1, 0.2), Pair(0, 2, 0.15)))
    check = judge_effect([none], 1.0, trigger="sks", captions_with_trigger=(3, 10))
    assert check.finding is not None and "barely changes" in check.finding
    assert any("3 of 10 captions" in r for r in check.remedies)
    assert any("strength" in r for r in check.remedies)
    softer = judge_effect([none, some], 1.0)
    assert softer.finding is None and "epoch 1" in softer.note
    assert judge_effect([none], None).note
    assert compared_strength((0, 0.5, 0.8)) == 0.8 and compared_strength((0.5, 1)) is None
    assert none.barely and not some.barely and BARELY == 0.02


def grid_images(tmp_path: Path, *, effect: float) -> tuple[Path, object]:
    """A grid of real pictures: strength s adds stripes s x effect."""
    plan = build_grid(
        [Checkpoint("output/a-000001.safetensors", "checkpoints/a-000001.safetensors", 1, 5, "epoch"),
         Checkpoint("output/a.safetensors", "checkpoints/a.safetensors", 2, 10, "final")],
        parse_grid("strengths=0,0.5,1,seeds=2"),
        ("一只柴犬",),
        PromptDefaults("", 96, 128, 20, 7.0),
    )  # fmt: skip
    folder = tmp_path / "images"
    for cell in plan.cells:
        picture(folder / cell.name, cell.seed, stripes=cell.strength * effect)
    return folder, plan


def test_contact_sheet_is_a_png_with_labels_and_every_image(tmp_path: Path) -> None:
    folder, plan = grid_images(tmp_path, effect=0.8)
    (folder / "a-missing.png").unlink(missing_ok=True)
    removed = plan.cells[-1].name  # type: ignore[attr-defined]
    (folder / removed).unlink()
    sheets = contact_sheets(plan, {p.name for p in folder.iterdir()})  # type: ignore[arg-type]
    assert [s.name for s in sheets] == ["sheet_p01_d1.png", "sheet_p01_d2.png"]
    sheet = sheets[1]
    assert sheet.rows == ("epoch 1", "epoch 2 (last)")
    assert sheet.columns == ("strength 0 (base)", "strength 0.5", "strength 1")
    assert sheet.images[1][2] is None, "the missing image is marked, not drawn"
    places = layout(sheet, (96, 128))
    out = tmp_path / "sheet.png"
    draw_sheet(sheet, places, folder, out)
    with Image.open(out) as drawn:
        assert drawn.size == (places.width, places.height)
        # The first cell holds the base picture, scaled into its box.
        box, name = places.cells[0]
        cell = drawn.crop((box.x, box.y, box.x + box.width, box.y + box.height))
        assert name == "base_p01_d2.png"
        assert ImageStat.Stat(cell.convert("L")).stddev[0] > 10, "a picture, not a blank box"
        # The labels are drawn: dark pixels in the row-label column and the header row.
        labels = drawn.crop((0, box.y, box.x - 4, box.y + box.height)).convert("L")
        assert labels.getextrema()[0] < 80
        header = drawn.crop((box.x, 0, drawn.width, box.y - 2)).convert("L")
        assert header.getextrema()[0] < 80


def test_damaged_and_oversized_images_do_not_break_a_sheet(tmp_path: Path) -> None:
    folder, plan = grid_images(tmp_path, effect=0.5)
    (folder / plan.cells[0].name).write_bytes(b"\x89PNG\r\n\x1a\n not really")  # type: ignore[attr-defined]
    with pytest.raises(Unreadable):
        open_rgb(folder / plan.cells[0].name)  # type: ignore[attr-defined]
    sheet = contact_sheets(plan)[0]  # type: ignore[arg-type]
    draw_sheet(sheet, layout(sheet), folder, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 0


def test_loss_plot_draws_every_series(tmp_path: Path) -> None:
    curve = LossCurve(
        current=tuple((s, 0.2 - s / 2000) for s in range(1, 401)),
        average=tuple((s, 0.19 - s / 2500) for s in range(1, 401)),
        epochs=tuple((e, 0.18 - e / 100) for e in range(1, 11)),
        validation=tuple((e, 0.2 - e / 120) for e in range(1, 11)),
    )
    out = tmp_path / "loss.png"
    assert draw_loss_plot(curve, out, marks=[(200, "e5")])
    with Image.open(out) as plot:
        colours = {c for _, c in plot.convert("RGB").getcolors(1 << 20) or []}
    assert (25, 80, 180) in colours and (220, 110, 20) in colours and (30, 150, 60) in colours
    assert not draw_loss_plot(LossCurve(), tmp_path / "none.png")


def test_text_chart_and_ticks() -> None:
    assert nice_ticks(0.0, 1.0, 5) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0.93, 1.21, 4) == [1.0, 1.1, 1.2]
    chart = text_chart(
        [("loss", "•", [(float(s), 1 / s) for s in range(1, 50)])], width=40, height=8
    )
    assert chart is not None and len(chart.lines) == 10
    top = chart.lines[0].split("┤")[1]
    bottom = chart.lines[7].split("┤")[1]
    assert top[0] == "•", "the first (highest) point is at the top left"
    assert bottom.rstrip()[-1] == "•", "the last (lowest) point is at the bottom right"
    assert text_chart([("x", "•", [])]) is None


@pytest.mark.parametrize(
    ("html", "outside"),
    [
        ('<img src="grid/a.png"><a href="#top">', []),
        ('<img src="https://example.com/x.png">', ["https://example.com/x.png"]),
        ("<link href='//cdn.example/x.css'>", ["//cdn.example/x.css"]),
        ('<img src="/etc/passwd">', ["/etc/passwd"]),
        ('<img src="../secret.png">', ["../secret.png"]),
        ('<a href="file:///home">', ["file:///home"]),
        ("<div style=\"background: url('http://x/y.png')\">", ["http://x/y.png"]),
        ('<style>@import "https://fonts.example/f.css";</style>', ["https://fonts.example/f.css"]),
        ('<img srcset="a.png 1x, https://x/b.png 2x">', ["https://x/b.png"]),
        ("<script src=data:text/javascript,1></script>", ["data:text/javascript,1"]),
    ],
)
def test_external_references_are_found(html: str, outside: list[str]) -> None:
    assert external_references(html) == outside


def test_the_page_keeps_every_path_inside_its_folder_and_escapes_text() -> None:
    context = _minimal_context()
    # A path that would leave the folder is quoted into a (missing) local file name.
    context["loss"]["plot"] = "https://example.com/loss.png"
    html = render_page(context)
    assert external_references(html) == []
    assert "://" not in html, "URLs in the facts are shown as text without their scheme"
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html


def _minimal_context() -> dict:
    return {
        "kohyawrap_version": "0",
        "name": "<script>alert(1)</script>",
        "run_id": "r",
        "status": "finished",
        "generated": "now",
        "headline": {"kind": "good", "text": "ok"},
        "headline_remedies": [],
        "findings": [],
        "suggestion": None,
        "loss": {"title": "t", "detail": "d", "remedies": [], "plot": None},
        "samples": [],
        "grid": None,
        "no_grid": "none",
        "effect": None,
        "cell_width": 100,
        "costs": [],
        "facts": [("sd-scripts", "https://github.com/kohya-ss/sd-scripts.git @ 48d368fa")],
        "settings": [],
        "reproduce": [],
    }


def test_a_changed_picture_is_not_the_same_picture(tmp_path: Path) -> None:
    a = picture(tmp_path / "a.png", 3)
    b = picture(tmp_path / "b.png", 3, stripes=1.0)
    with Image.open(a) as one, Image.open(b) as two:
        assert ImageChops.difference(one.convert("RGB"), two.convert("RGB")).getbbox() is not None
