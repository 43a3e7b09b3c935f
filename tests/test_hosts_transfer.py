"""The transfer building blocks: the tar stream, sha256sum parsing, safe names, safe placing."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from kohyawrap.errors import HostError, UsageError
from kohyawrap.hosts import transfer
from kohyawrap.hosts.local import LocalHost


def _items(root: Path, files: dict[str, bytes]) -> list[transfer.LocalFile]:
    paths = {}
    for rel, data in files.items():
        path = root / rel.replace("/", "_")
        path.write_bytes(data)
        paths[rel] = path
    return transfer.describe_local(paths)


def test_tar_stream_is_a_valid_archive_python_and_gnu_tar_read(tmp_path: Path) -> None:
    files = {"10_sks dog/ünï ✓.png": b"\x89PNG" * 300, "10_sks dog/a.txt": b"sks dog", "e": b""}
    stream = b"".join(transfer.tar_stream(_items(tmp_path, files)))
    assert len(stream) % 10240 == 0
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert got == files
    out = tmp_path / "gnu"
    out.mkdir()
    subprocess.run(["tar", "-x", "-f", "-", "-C", str(out)], input=stream, check=True)
    assert (out / "10_sks dog" / "ünï ✓.png").read_bytes() == files["10_sks dog/ünï ✓.png"]


def test_parse_sha256sum_handles_escaped_names_and_ignores_strangers() -> None:
    digest = "ab" * 32
    output = (
        f"{digest}  /d/plain name\n"
        f"\\{digest}  /d/back\\\\slash\n"
        f"\\{digest}  /d/new\\nline\n"
        f"{digest}  /etc/not-asked-for\n"
        "sha256sum: /d/missing: No such file or directory\n"
    ).encode()
    wanted = ["/d/plain name", "/d/back\\slash", "/d/new\nline", "/d/missing"]
    assert transfer.parse_sha256sum(output, wanted) == {
        "/d/plain name": digest,
        "/d/back\\slash": digest,
        "/d/new\nline": digest,
    }


def test_remote_names_cannot_escape_the_target_dir(tmp_path: Path) -> None:
    assert (
        transfer.local_target(tmp_path, "at-step00000500.safetensors")
        == tmp_path / "at-step00000500.safetensors"
    )
    for bad in (
        "../../.ssh/authorized_keys",
        "/etc/passwd",
        "a/b",
        "..",
        ".",
        "",
        "x\x1b[2J",
        "c:\\x",
    ):
        with pytest.raises(HostError, match="unsafe file name"):
            transfer.local_target(tmp_path, bad)


def test_place_never_replaces_an_existing_file(tmp_path: Path) -> None:
    part = tmp_path / "ckpt.safetensors.part"
    part.write_bytes(b"new")
    final = tmp_path / "ckpt.safetensors"
    final.write_bytes(b"earlier run")
    with pytest.raises(UsageError, match="overwrite"):
        transfer.place(part, final)
    assert final.read_bytes() == b"earlier run"
    final.unlink()
    transfer.place(part, final)
    assert final.read_bytes() == b"new" and not part.exists()


def test_bad_digest_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a sha256"):
        LocalHost().download(str(tmp_path), tmp_path / "x", expected_sha256="abc")


def test_a_file_edited_during_upload_fails_the_upload(tmp_path: Path) -> None:
    src = tmp_path / "img.png"
    src.write_bytes(b"a" * (3 << 20))

    def edit_it(done: int, total: int) -> None:
        if done < total:
            with src.open("r+b") as fh:
                fh.seek(-10, 2)
                fh.write(b"b" * 10)

    with pytest.raises(UsageError, match="changed while it was being uploaded"):
        LocalHost().upload_tree({"img.png": src}, str(tmp_path / "remote"), progress=edit_it)
    # The next upload compares hashes again and leaves an exact copy of the file as it is now.
    LocalHost().upload_tree({"img.png": src}, str(tmp_path / "remote"))
    assert (tmp_path / "remote" / "img.png").read_bytes() == src.read_bytes()
