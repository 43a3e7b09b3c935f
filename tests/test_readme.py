"""README.md walked as a new user walks it: every command of its ```bash blocks run as written, in
order, each exiting 0, sharing one folder (a command uses what an earlier one made).

The world is a user's: a HOME of their own with a WebUI's LoRA folder, a folder holding
``./photos`` (real JPEGs with Chinese names, some captioned), and ``gpu-box``, the rented box the
README names, written into ``~/.ssh/config`` as a user would. The box is a real sshd on loopback
whose sessions look like a RunPod pod (tests/fixtures/rentedbox.py); what cannot exist here stands
in: sd-scripts (the fake repository), the GPU, the provider's ``runpodctl`` and the Hugging Face Hub,
which serves the SDXL base model the README names (a few bytes instead of 6.9 GB).

Commands that set up the project itself (``scripts/...``) run in this checkout, as the README
says; ``NOT_RUN`` lists the ones left out, each with its reason, printed with the timings.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from kohyawrap.hosts.transfer import file_sha256
from kohyawrap.launcher.legs import pulled_everywhere
from kohyawrap.launcher.manifest import RunStatus
from kohyawrap.launcher.runstore import RunStore
from tests.fixtures.fakesds import FakeSdScripts
from tests.fixtures.gpu import FakeGpu
from tests.fixtures.hub import FakeHub, _handler
from tests.fixtures.images import write_jpeg, write_png
from tests.fixtures.rentedbox import POD_ID, RentedBox, rented_box
from tests.fixtures.sshd import NO_SSHD, sshd_available

pytestmark = pytest.mark.slow  # the whole path, two trainings and three grids: about a minute

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# Commands of the README not run here, and why (a stale entry fails the test).
NOT_RUN = {
    "scripts/test": "the test suite itself: CI runs it; run from inside a test it would recurse",
}
# The base model the README names, served by the fake hub: a valid, tiny .safetensors file.
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0/sd_xl_base_1.0.safetensors"
SAFETENSORS = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "
WEBUI_LORAS = "stable-diffusion-webui/models/Lora"


@dataclass(frozen=True)
class Command:
    """One command of a README block, as written (continuation lines included)."""

    line: int  # its first line in README.md
    text: str

    @property
    def skipped(self) -> str | None:
        """Why it is not run here, or None."""
        return next((why for start, why in NOT_RUN.items() if self.text.startswith(start)), None)


def bash_blocks(markdown: str) -> list[list[Command]]:
    """The commands of each ```bash block: comment lines and blank lines left out, a line ending
    in a backslash joined with the next as bash joins them."""
    blocks: list[list[Command]] = []
    block: list[Command] | None = None
    pending: list[str] = []
    start = 0
    for number, line in enumerate(markdown.splitlines(), 1):
        fence = line.strip()
        if block is None:
            if fence == "```bash":
                block = []
            continue
        if fence == "```" and not pending:
            blocks.append(block)
            block = None
        elif pending or (fence and not fence.startswith("#")):
            start = start if pending else number
            pending.append(line)
            if not line.rstrip().endswith("\\"):
                block.append(Command(start, "\n".join(pending)))
                pending = []
    assert block is None and not pending, "README.md ends inside a ```bash block"
    return blocks


def test_bash_blocks_are_read_as_bash_reads_them() -> None:
    text = "x\n```bash\n# a comment\nkohyawrap a \\\n    --b 1   # why\n\nkohyawrap c\n```\n"
    text += "```\nnot bash\n```\n```bash\nscripts/test -k x\n```\n"
    assert bash_blocks(text) == [
        [Command(4, "kohyawrap a \\\n    --b 1   # why"), Command(7, "kohyawrap c")],
        [Command(13, "scripts/test -k x")],
    ]
    assert Command(13, "scripts/test -k x").skipped == NOT_RUN["scripts/test"]


# ---------------------------------------------------------------------------------------------
# The user's world


@dataclass(frozen=True)
class User:
    home: Path
    folder: Path  # where the README's commands run: ./photos is here
    box: RentedBox
    env: dict[str, str]


def _photos(folder: Path) -> None:
    """A phone's photos: JPEGs and a PNG, names in Chinese, two with a caption beside them."""
    for i in range(5):
        write_jpeg(folder / f"柴犬 {i}.jpg", size=(768, 576), seed=i)
    write_png(folder / "公园 散步.png", size=(576, 768), seed=9)
    (folder / "柴犬 0.txt").write_text("a dog on the grass\n", encoding="utf-8")
    (folder / "公园 散步.txt").write_text("a dog in the park, 公园\n", encoding="utf-8")


@contextlib.contextmanager
def _hub_serving(hub: FakeHub) -> Iterator[None]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def user(tmp_path: Path, fake_sdscripts: FakeSdScripts, fake_gpu: FakeGpu) -> Iterator[User]:
    if not sshd_available():
        pytest.skip(f"{NO_SSHD}: the README's rented box is a real sshd")
    root = tmp_path / "readme 走查"
    home, folder = root / "home", root / "我的 lora"
    (home / WEBUI_LORAS).mkdir(parents=True)
    _photos(folder / "photos")
    hub = FakeHub(url="", files={SDXL_BASE: SAFETENSORS})
    with _hub_serving(hub), rented_box(tmp_path / "box", fake_sdscripts, fake_gpu, hub.url) as box:
        box.write_ssh_config(home)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("SSH_AUTH_SOCK", "HF_TOKEN", "VIRTUAL_ENV") and not k.startswith("XDG_")
        }
        # `source .venv/bin/activate`, as the README says after scripts/demo
        venv = ROOT / ".venv"
        env.update(
            HOME=str(home),
            PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
            VIRTUAL_ENV=str(venv),
            COLUMNS="120",
            PYTHONUNBUFFERED="1",
            HF_ENDPOINT=hub.url,
            HF_HUB_DISABLE_XET="1",
        )
        yield User(home, folder, box, env)


# ---------------------------------------------------------------------------------------------
# The walk


@dataclass(frozen=True)
class Ran:
    command: Command
    seconds: float
    note: str = ""


def run_as_written(command: Command, user: User) -> Ran:
    """Run ``command`` with bash, in the checkout for ``scripts/...``, else in the user's folder."""
    cwd = ROOT if command.text.startswith("scripts/") else user.folder
    began = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", "set -o pipefail\n" + command.text],
        cwd=cwd,
        env=user.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.monotonic() - began
    if done.returncode != 0:
        pytest.fail(
            f"README.md:{command.line}: exit {done.returncode}\n{command.text}\n"
            f"--- stdout (end)\n{done.stdout[-3000:]}\n--- stderr (end)\n{done.stderr[-5000:]}",
            pytrace=False,
        )
    return Ran(command, seconds)


def walk(user: User) -> list[Ran]:
    ran = []
    for block in bash_blocks(README.read_text(encoding="utf-8")):
        for command in block:
            why = command.skipped
            ran.append(Ran(command, 0.0, why) if why else run_as_written(command, user))
    return ran


def _timings(ran: list[Ran]) -> str:
    def first_line(c: Command) -> str:
        return re.sub(r"\s+#.*", "", c.text.splitlines()[0]).rstrip(" \\")[:90]

    rows = [
        f"  {r.seconds:6.1f} s  README.md:{r.command.line}  {first_line(r.command)}" for r in ran
    ]
    rows += [f"  not run: {first_line(r.command)}: {r.note}" for r in ran if r.note]
    return "\n".join(rows)


def test_every_readme_command_runs_as_written(user: User) -> None:
    ran = walk(user)
    print("\nREADME.md, as written:\n" + _timings(ran))
    assert {r.command.text.split()[0] for r in ran if r.note} == set(NOT_RUN)

    # What the path promised happened, beyond the exit codes:
    (entry,) = RunStore(user.folder / "runs").entries()
    m = entry.manifest
    assert m is not None and m.status is RunStatus.FINISHED and m.plan.output_name == "my_lora"
    assert [leg.kind for leg in m.legs] == ["train", "extend"]
    # each box was destroyed once its leg's LoRA was safe: the first, and the one rented again
    assert user.box.provider_calls() == [f"runpodctl remove pod {POD_ID}"] * 2
    (exported,) = (user.home / WEBUI_LORAS).iterdir()
    pulled = {f.sha256 for f in pulled_everywhere(m).values()}
    assert file_sha256(exported) in pulled, "export copied a checkpoint that was pulled"
    assert (user.folder / "task.yaml").is_file()
    assert len(list((entry.run.path / "grid").iterdir())) >= 2, "train's grid and grid's"
    assert (ROOT / "demo_out").is_dir()  # scripts/demo ran for real, in the checkout
