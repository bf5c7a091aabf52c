"""Every kind of image file a user's folder may hold decodes to correct 8-bit RGB (real files written here)."""
import numpy as np
import pytest
import torch
from PIL import Image

from clbench.data.files import decode, list_images
from clbench.data.imagefolder import build_imagefolder

SIZE = 16
RED = (200, 30, 60)


def solid(mode, value, size=(20, 24)):
    return Image.new(mode, size, value)


def write(kind, path):
    """Write one image of ``kind``; return (path, expected mean RGB of the decoded image)."""
    if kind == "gray16_png":  # 16-bit grey at 16,705 of 65,535: 65 in 8 bits (the "mean 255 instead of ~65")
        Image.fromarray(np.full((24, 20), 16705, dtype=np.uint16)).save(path := path.with_suffix(".png"))
        return path, (65, 65, 65)
    if kind == "rgb16_png":  # 48-bit RGB PNG written by numpy-level bytes through Pillow is not possible: use I;16 channels
        import zlib
        import struct

        h, w = 6, 5
        row = b"".join(struct.pack(">HHH", 51400, 7710, 15420) for _ in range(w))  # /257 -> 200, 30, 60
        raw = b"".join(b"\x00" + row for _ in range(h))

        def chunk(tag, data):
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

        png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
        (path := path.with_suffix(".png")).write_bytes(png)
        return path, RED
    if kind == "animated_gif":  # 3 frames; the first is red
        frames = [solid("RGB", RED), solid("RGB", (0, 0, 255)), solid("RGB", (0, 255, 0))]
        frames[0].save(path := path.with_suffix(".gif"), save_all=True, append_images=frames[1:], duration=50, loop=0)
        return path, RED
    if kind == "bmp":
        solid("RGB", RED).save(path := path.with_suffix(".bmp"))
        return path, RED
    if kind == "palette_png":
        solid("RGB", RED).convert("P", palette=Image.Palette.ADAPTIVE).save(path := path.with_suffix(".png"))
        return path, RED
    if kind == "cmyk_jpeg":
        solid("RGB", RED).convert("CMYK").save(path := path.with_suffix(".jpg"), quality=100)
        return path, RED
    if kind == "rgba_png":  # alpha dropped, as CLIP's convert("RGB")
        solid("RGBA", RED + (40,)).save(path := path.with_suffix(".png"))
        return path, RED
    if kind == "gray_alpha_png":
        solid("LA", (90, 128)).save(path := path.with_suffix(".png"))
        return path, (90, 90, 90)
    if kind == "gray_jpeg":
        solid("L", 90).save(path := path.with_suffix(".jpg"), quality=100)
        return path, (90, 90, 90)
    if kind == "bilevel_png":
        solid("1", 1).save(path := path.with_suffix(".png"))
        return path, (255, 255, 255)
    if kind == "tiff":
        solid("RGB", RED).save(path := path.with_suffix(".tif"))
        return path, RED
    if kind == "webp":
        solid("RGB", RED).save(path := path.with_suffix(".webp"), lossless=True)
        return path, RED
    if kind == "upper_case_extension":
        solid("RGB", RED).save(path := path.with_suffix(".JPG"), quality=100)
        return path, RED
    raise ValueError(kind)


KINDS = ["gray16_png", "rgb16_png", "animated_gif", "bmp", "palette_png", "cmyk_jpeg", "rgba_png", "gray_alpha_png",
         "gray_jpeg", "bilevel_png", "tiff", "webp", "upper_case_extension"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_image_kind_decodes_to_its_true_8_bit_rgb(tmp_path, kind):
    path, expected = write(kind, tmp_path / "img")
    image = decode(str(path), SIZE)
    assert image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE)
    mean = image.float().mean((1, 2))
    tolerance = 3 if "jpeg" in kind or "JPG" in str(path) else 1  # JPEG's colour conversion rounds
    assert mean.tolist() == pytest.approx(list(expected), abs=tolerance), kind


def test_float_pixels_are_refused_with_the_fix(tmp_path):
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(path := tmp_path / "f.tif")
    with pytest.raises(ValueError, match="8- or 16-bit"):
        decode(str(path), SIZE)


def test_a_folder_of_every_kind_with_os_leftovers_builds_and_loads(tmp_path):
    for split in ("train", "test"):
        for cls in ("red", "other"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i, kind in enumerate(KINDS):
                write(kind, folder / f"{i:02d}")
            (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
            (folder / "._00.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # a resource fork named like an image
            (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    assert len(list_images(tmp_path / "train" / "red")) == len(KINDS)
    data = build_imagefolder(path=str(tmp_path), image_size=SIZE, workers=0)
    images = data.train.load(torch.arange(len(data.train)))
    assert images.shape == (2 * len(KINDS), 3, SIZE, SIZE)


def test_symlinked_class_folders_and_files_are_read(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    path, _ = write("bmp", shared / "a")
    for split in ("train", "test"):
        (tmp_path / "data" / split).mkdir(parents=True)
        real = shared / split / "red"
        real.mkdir(parents=True)
        (real / "a.bmp").symlink_to(path)  # a linked file inside a linked folder
        (tmp_path / "data" / split / "red").symlink_to(real, target_is_directory=True)
    data = build_imagefolder(path=str(tmp_path / "data"), image_size=SIZE, workers=0)
    assert data.class_names == ["red"] and data.train.load(torch.tensor([0])).float().mean().item() > 0
