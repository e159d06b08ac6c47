"""Tests for shiftaudit.probe_sets (archives, labels, images): real files in tmp_path, no mocks."""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from shiftaudit.errors import ProbeSetError, ShiftAuditError
from shiftaudit.probe_sets import Probe, ProbeLimits, ProbeSet, open_probe_set

# ---------------------------------------------------------------- helpers


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def solid(color: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> Image.Image:
    return Image.new("RGB", size, color)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def raw_png(width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> bytes:
    """A PNG built by hand, for layouts Pillow will not write (16-bit RGB, huge sizes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


COLORS = {"0/a.png": (255, 0, 0), "0/b.png": (0, 255, 0), "1/c.png": (0, 0, 255)}


def make_class_dir(root: Path) -> Path:
    for name, color in COLORS.items():
        write(root / name, png_bytes(solid(color)))
    return root


def zip_dir(src: Path, dst: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, prefix + p.relative_to(src).as_posix())
    return dst


def tar_dir(src: Path, dst: Path, mode: str = "w:gz") -> Path:
    with tarfile.open(dst, mode) as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, p.relative_to(src).as_posix(), recursive=False)
    return dst


def zip_members(dst: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dst


def tar_members(dst: Path, members: list[tarfile.TarInfo], data: dict[str, bytes]) -> Path:
    with tarfile.open(dst, "w:gz") as tf:
        for info in members:
            payload = data.get(info.name)
            if payload is not None:
                info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return dst


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    d = tmp_path / "scratch"
    d.mkdir()
    return d


def refused(path: Path, name: str, scratch: Path, **kw) -> ProbeSetError:
    """Open must fail with a message naming ``name`` and leave ``scratch`` empty."""
    with pytest.raises(ProbeSetError, match=re.escape(name)) as info:
        open_probe_set(path, tmp_dir=scratch, **kw)
    assert os.listdir(scratch) == []
    return info.value


def one_image(tmp_path: Path, data: bytes, name: str = "img.png") -> ProbeSet:
    write(tmp_path / "set" / name, data)
    return open_probe_set(tmp_path / "set")


# ---------------------------------------------------------------- loading and labels


def test_directory_zip_and_tar_agree(tmp_path: Path, scratch: Path) -> None:
    src = make_class_dir(tmp_path / "set")
    zipped = zip_dir(src, tmp_path / "set.zip", prefix="set/")  # zip of a folder: unwrapped
    with zipfile.ZipFile(zipped, "a") as zf:  # macOS litter is ignored
        zf.writestr("__MACOSX/set/0/._a.png", b"resource fork")
        zf.writestr("set/.DS_Store", b"junk")
    sources = [
        src,
        zipped,
        tar_dir(src, tmp_path / "set.tar.gz"),
        tar_dir(src, tmp_path / "set.tar", mode="w"),
        tar_dir(src, tmp_path / "misnamed.zip"),  # detected by content, not name
    ]
    expected = [Probe("0/a.png", 0), Probe("0/b.png", 0), Probe("1/c.png", 1)]
    for path in sources:
        with open_probe_set(path, tmp_dir=scratch) as ps:
            assert ps.probes == expected, path
            assert ps.has_labels
            assert len(ps) == 3
            assert ps.label_summary() == {0: 2, 1: 1}
            for i, probe in enumerate(ps.probes):
                img = ps.load_image(i)
                assert img.shape == (4, 6, 3)
                assert img.dtype == np.uint8
                assert img.flags.c_contiguous
                assert tuple(img[0, 0]) == COLORS[probe.name]
        assert os.listdir(scratch) == []
    with open_probe_set(src, tmp_dir=scratch) as ps:
        assert ps.root == src  # read in place
        assert os.listdir(scratch) == []


def test_archive_temp_dir_lives_until_close(tmp_path: Path, scratch: Path) -> None:
    archive = zip_dir(make_class_dir(tmp_path / "set"), tmp_path / "set.zip")
    ps = open_probe_set(archive, tmp_dir=scratch)
    assert len(os.listdir(scratch)) == 1
    ps.close()
    assert os.listdir(scratch) == []
    with pytest.raises(ProbeSetError, match=re.escape("0/a.png")):
        ps.load_image(0)


def test_sha256_stable_and_content_sensitive(tmp_path: Path) -> None:
    src = make_class_dir(tmp_path / "set")
    write(src / ".DS_Store", b"junk")  # hidden files do not count
    first = open_probe_set(src).sha256
    assert open_probe_set(src).sha256 == first
    manifest = "".join(
        f"{name}\t{hashlib.sha256((src / name).read_bytes()).hexdigest()}\n"
        for name in sorted(COLORS)
    )
    assert first == hashlib.sha256(manifest.encode()).hexdigest()

    write(src / "0/a.png", png_bytes(solid((254, 0, 0))))
    assert open_probe_set(src).sha256 != first

    archive = zip_dir(src, tmp_path / "set.zip")
    with open_probe_set(archive, tmp_dir=tmp_path) as ps:
        assert ps.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()


def test_labels_csv_with_integers(tmp_path: Path) -> None:
    src = tmp_path / "set"
    for name in ("x.png", "sub/y.png", "z.png"):
        write(src / name, png_bytes(solid((1, 2, 3))))
    write(src / "labels.csv", b"filename,label\nx.png,3\nsub/y.png,0\n\nz.png, 3\n")
    ps = open_probe_set(src)
    assert ps.probes == [Probe("sub/y.png", 0), Probe("x.png", 3), Probe("z.png", 3)]
    assert ps.label_summary() == {0: 1, 3: 2}


def test_labels_csv_with_class_names(tmp_path: Path, scratch: Path) -> None:
    src = tmp_path / "set"
    for name in ("x.png", "y.png"):
        write(src / name, png_bytes(solid((1, 2, 3))))
    write(src / "labels.csv", b"filename,label\nx.png,dog\ny.png,cat\n")
    ps = open_probe_set(src, class_names=["cat", "dog"])
    assert [p.label for p in ps.probes] == [1, 0]
    refused(src, "'dog'", scratch, class_names=["cat"])
    refused(src, "class_names is needed", scratch)


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ("x.png,0\n", "y.png"),  # image not listed
        ("x.png,0\ny.png,0\nghost.png,1\n", "ghost.png"),  # listed file missing
        ("x.png,0\ny.png,0\nx.png,1\n", "duplicate row for 'x.png'"),
        ("x.png,0\ny.png,-1\n", "line 3"),
    ],
)
def test_labels_csv_errors(tmp_path: Path, scratch: Path, rows: str, match: str) -> None:
    src = tmp_path / "set"
    for name in ("x.png", "y.png"):
        write(src / name, png_bytes(solid((1, 2, 3))))
    write(src / "labels.csv", ("filename,label\n" + rows).encode())
    refused(src, match, scratch)


def test_class_folders_with_names(tmp_path: Path, scratch: Path) -> None:
    src = tmp_path / "set"
    write(src / "dog/a.png", png_bytes(solid((1, 1, 1))))
    write(src / "cat/deeper/b.png", png_bytes(solid((2, 2, 2))))
    ps = open_probe_set(src, class_names=["bird", "cat", "dog"])
    assert ps.probes == [Probe("cat/deeper/b.png", 1), Probe("dog/a.png", 2)]
    err = refused(src, "'dog'", scratch, class_names=["bird", "cat"])
    assert "class_names does not contain" in str(err)
    assert "class_names is needed" in str(refused(src, "class folder 'cat'", scratch))


def test_class_folder_index_out_of_range(tmp_path: Path, scratch: Path) -> None:
    src = tmp_path / "set"
    write(src / "5/a.png", png_bytes(solid((1, 1, 1))))
    assert open_probe_set(src).probes == [Probe("5/a.png", 5)]
    refused(src, "class folder '5'", scratch, class_names=["a", "b"])


def test_unlabeled_and_mixed(tmp_path: Path, scratch: Path) -> None:
    src = tmp_path / "set"
    write(src / "b.png", png_bytes(solid((1, 1, 1))))
    write(src / "a.jpg", png_bytes(solid((1, 1, 1)), "JPEG"))
    write(src / "c.webp", png_bytes(solid((9, 9, 9)), "WEBP", lossless=True))
    write(src / "__MACOSX/._b.png", b"resource fork")
    write(src / ".hidden/x.txt", b"ignored")
    ps = open_probe_set(src)
    assert ps.probes == [Probe("a.jpg", None), Probe("b.png", None), Probe("c.webp", None)]
    assert not ps.has_labels
    assert ps.label_summary() == {}
    assert tuple(ps.load_image(2)[0, 0]) == (9, 9, 9)
    write(src / "0/d.png", png_bytes(solid((1, 1, 1))))
    refused(src, "b.png", scratch)  # root images mixed with a class folder


# ---------------------------------------------------------------- decoding


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    ps = one_image(tmp_path, png_bytes(img, "JPEG", exif=exif, quality=95), "rot.jpg")
    out = ps.load_image(0).astype(int)
    assert out.shape == (40, 20, 3)
    top_right, top_left = out[3, 16], out[3, 3]
    assert top_right[0] > 200  # red moved to the top-right
    assert top_right[2] < 60
    assert top_left[0] < 60
    assert top_left[2] > 200


def test_grayscale_and_bilevel(tmp_path: Path) -> None:
    gray = Image.new("L", (3, 2), 77)
    assert (
        one_image(tmp_path / "l", png_bytes(gray)).load_image(0).tolist()
        == [[[77, 77, 77]] * 3] * 2
    )
    bits = Image.new("1", (2, 1), 0)
    bits.putpixel((1, 0), 1)
    out = one_image(tmp_path / "b", png_bytes(bits)).load_image(0)
    assert out.tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_palette_with_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    data = png_bytes(pal, transparency=0)  # index 0 (red) is fully transparent
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = one_image(tmp_path, data).load_image(0)
    assert out.tolist() == [[[0, 0, 0], [0, 255, 0]]]


def test_rgba_composited_over_black(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (200, 100, 50, 128))
    rgba.putpixel((1, 0), (10, 20, 30, 255))
    out = one_image(tmp_path, png_bytes(rgba)).load_image(0)
    assert out.tolist() == [[[100, 50, 25], [10, 20, 30]]]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red
    data = png_bytes(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    r, g, b = one_image(tmp_path, data, "c.jpg").load_image(0)[4, 4].astype(int)
    assert r > 220
    assert max(g, b) < 40


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    wide = Image.fromarray(np.array([[65535, 32896, 0, 257, 384]], dtype=np.uint16))
    data = png_bytes(wide)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = one_image(tmp_path, data).load_image(0)
    assert out[..., 0].tolist() == [[255, 128, 0, 1, 1]]
    assert (out[..., 0] == out[..., 2]).all()


def test_16bit_rgb_png(tmp_path: Path) -> None:
    raw = b"\x00" + struct.pack(">6H", 65535, 0, 32896, 257, 514, 0)
    out = one_image(tmp_path, raw_png(2, 1, 16, 2, raw)).load_image(0)
    assert out.tolist() == [[[255, 0, 128], [1, 2, 0]]]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(tmp_path: Path, scratch: Path, fmt: str) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = png_bytes(Image.fromarray(noise), fmt)
    src = tmp_path / "set"
    write(src / "good.png", png_bytes(solid((1, 2, 3))))
    write(src / "cut.img", data[: len(data) // 2])
    ps = open_probe_set(src)  # the header is intact, so opening succeeds
    ps.load_image(1)
    with pytest.raises(ProbeSetError, match=re.escape("cut.img")):
        ps.verify()
    with pytest.raises(ProbeSetError, match=re.escape("cut.img")):
        ps.load_image(0)
    archive = zip_dir(src, tmp_path / "set.zip")
    refused(archive, "cut.img", scratch, verify=True)


def test_load_truncated_images_mode_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ps = one_image(tmp_path, png_bytes(solid((1, 2, 3))))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ProbeSetError, match=r"img\.png.*LOAD_TRUNCATED_IMAGES"):
        ps.load_image(0)


def test_corrupt_non_image_and_gif(tmp_path: Path, scratch: Path) -> None:
    rng = np.random.default_rng(1)
    cases = {
        "noise.png": rng.bytes(500),
        "notes.txt": b"hello",
        "anim.gif": png_bytes(Image.new("P", (4, 4)), "GIF"),
        "pic.tiff": png_bytes(solid((1, 1, 1)), "TIFF"),
    }
    for name, data in cases.items():
        src = tmp_path / name.replace(".", "_")
        write(src / "ok.png", png_bytes(solid((1, 2, 3))))
        write(src / name, data)
        refused(src, name, scratch)
        refused(zip_dir(src, tmp_path / f"{name}.zip"), name, scratch)


def test_empty_sets(tmp_path: Path, scratch: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(empty, "no images", scratch)
    write(tmp_path / "hidden/.x.png", png_bytes(solid((1, 1, 1))))
    refused(tmp_path / "hidden", "no images", scratch)
    archive = zip_members(tmp_path / "e.zip", {"__MACOSX/._a.png": b"x", "d/": b""})
    assert "e.zip" in str(refused(archive, "no images", scratch))
    refused(write(tmp_path / "plain.bin", b"not an archive"), "plain.bin", scratch)
    refused(tmp_path / "missing", "missing", scratch)


# ---------------------------------------------------------------- archive safety


@pytest.mark.parametrize("name", ["../evil.png", "a/../../evil.png", "C:/evil.png", "..\\evil.png"])
def test_zip_slip(tmp_path: Path, scratch: Path, name: str) -> None:
    archive = zip_members(tmp_path / "slip.zip", {"ok.png": png_bytes(solid((1, 1, 1)))})
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr(name, png_bytes(solid((2, 2, 2))))
    refused(archive, repr(name), scratch)
    assert not (tmp_path / "evil.png").exists()


def test_zip_absolute_path(tmp_path: Path, scratch: Path) -> None:
    target = tmp_path / "abs_evil.png"
    archive = zip_members(tmp_path / "abs.zip", {str(target): png_bytes(solid((1, 1, 1)))})
    refused(archive, str(target), scratch)
    assert not target.exists()


def test_zip_symlink_refused(tmp_path: Path, scratch: Path) -> None:
    info = zipfile.ZipInfo("link.png")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "sym.zip", "w") as zf:
        zf.writestr("ok.png", png_bytes(solid((1, 1, 1))))
        zf.writestr(info, str(tmp_path / "outside.png"))
    assert "symbolic link" in str(refused(tmp_path / "sym.zip", "link.png", scratch))


def test_zip_duplicate_member_refused(tmp_path: Path, scratch: Path) -> None:
    with zipfile.ZipFile(tmp_path / "dup.zip", "w") as zf:
        zf.writestr("a.png", png_bytes(solid((1, 1, 1))))
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("a.png", png_bytes(solid((2, 2, 2))))
    refused(tmp_path / "dup.zip", "a.png", scratch)


@pytest.mark.parametrize("name", ["../evil.png", "/tmp/evil_abs.png"])
def test_tar_slip(tmp_path: Path, scratch: Path, name: str) -> None:
    data = {"ok.png": png_bytes(solid((1, 1, 1))), name: png_bytes(solid((2, 2, 2)))}
    archive = tar_members(tmp_path / "slip.tgz", [tarfile.TarInfo(n) for n in data], data)
    refused(archive, name, scratch)
    assert not (tmp_path / "evil.png").exists()


@pytest.mark.parametrize(
    ("kind", "link"),
    [(tarfile.SYMTYPE, "/etc/passwd"), (tarfile.LNKTYPE, "ok.png"), (tarfile.FIFOTYPE, "")],
)
def test_tar_links_and_specials_refused(
    tmp_path: Path, scratch: Path, kind: bytes, link: str
) -> None:
    special = tarfile.TarInfo("special.png")
    special.type = kind
    special.linkname = link
    data = {"ok.png": png_bytes(solid((1, 1, 1)))}
    archive = tar_members(tmp_path / "s.tar.gz", [tarfile.TarInfo("ok.png"), special], data)
    err = refused(archive, "special.png", scratch)
    assert ("link, refused" in str(err)) == (kind != tarfile.FIFOTYPE)


@pytest.mark.parametrize("fmt", ["zip", "tgz"])
def test_bomb_stops_at_extracted_limit(tmp_path: Path, scratch: Path, fmt: str) -> None:
    # A real image header first: a member of bare zeros is refused from its first bytes.
    zeros = png_bytes(solid((1, 1, 1))) + bytes(50 * 1024**2)
    members = {"ok.png": png_bytes(solid((1, 1, 1))), "zeros.png": zeros}
    if fmt == "zip":
        archive = zip_members(tmp_path / "bomb.zip", members)
    else:
        infos = [tarfile.TarInfo(n) for n in members]
        archive = tar_members(tmp_path / "bomb.tgz", infos, members)
    assert archive.stat().st_size < 1024**2
    limits = ProbeLimits(max_extracted_bytes=1024**2)
    err = refused(archive, "zeros.png", scratch, limits=limits)
    assert "max_extracted_bytes" in str(err)


def test_too_many_files(tmp_path: Path, scratch: Path) -> None:
    src = tmp_path / "set"
    for i in range(5):
        write(src / f"{i}.png", png_bytes(solid((i, i, i))))
    limits = ProbeLimits(max_files=3)
    for path in (src, zip_dir(src, tmp_path / "s.zip"), tar_dir(src, tmp_path / "s.tgz")):
        assert "max_files=3" in str(refused(path, path.name, scratch, limits=limits))
    assert len(open_probe_set(src, limits=ProbeLimits(max_files=5))) == 5


def test_archive_too_large(tmp_path: Path, scratch: Path) -> None:
    archive = zip_dir(make_class_dir(tmp_path / "set"), tmp_path / "big.zip")
    err = refused(archive, "big.zip", scratch, limits=ProbeLimits(max_archive_bytes=100))
    assert "max_archive_bytes" in str(err)


@pytest.mark.parametrize("side", [10_000, 30_000])
def test_pixel_bomb_refused_from_header(tmp_path: Path, scratch: Path, side: int) -> None:
    # 1-bit zeros: megabytes on disk at most, but side**2 pixels once decoded. 10k x 10k is
    # caught by our own limit (below Pillow's), 30k x 30k by Pillow's DecompressionBombError.
    rows = (b"\x00" + bytes((side + 7) // 8)) * side
    src = tmp_path / "set"
    write(src / "ok.png", png_bytes(solid((1, 1, 1))))
    write(src / "bomb.png", raw_png(side, side, 1, 0, rows))
    archive = tar_dir(src, tmp_path / "bomb.tgz")
    start = time.perf_counter()
    refused(src, "bomb.png", scratch)
    refused(archive, "bomb.png", scratch)
    assert time.perf_counter() - start < 5
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # the global was left alone


def test_custom_pixel_limit(tmp_path: Path, scratch: Path) -> None:
    write(tmp_path / "set/big.png", png_bytes(solid((1, 1, 1), (20, 20))))
    err = refused(tmp_path / "set", "big.png", scratch, limits=ProbeLimits(max_image_pixels=399))
    assert "20x20" in str(err)
    assert len(open_probe_set(tmp_path / "set", limits=ProbeLimits(max_image_pixels=400))) == 1


def test_errors_are_shiftaudit_errors() -> None:
    assert issubclass(ProbeSetError, ShiftAuditError)
