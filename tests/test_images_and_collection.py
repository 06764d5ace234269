"""Bad inputs are refused by name, collections and labels are read correctly."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from search.engine.collection import read_labels_csv, scan_collection, stable_id, write_labels_csv
from search.engine.errors import CollectionError, ImageError
from search.engine.images import MAX_IMAGE_PIXELS, open_image, open_query_image

from .conftest import corel_image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height``: a decompression bomb's signature."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_real_jpeg_opens_as_rgb():
    image = open_image(corel_image(0))
    assert image.mode == "RGB"
    assert image.size in ((384, 256), (256, 384))


def test_text_file_named_jpg_is_refused_by_content(tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not a picture\n" * 20)
    with pytest.raises(ImageError, match=r"notes\.jpg: not an image file"):
        open_image(fake)


def test_truncated_jpeg_is_refused(tmp_path):
    data = corel_image(1).read_bytes()
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match=r"cut\.jpg: image is truncated or corrupt"):
        open_image(truncated)


def photo_sized(tmp_path, name: str, factor: int, exif: bytes = b"") -> tuple:
    """A Corel picture enlarged ``factor`` times and saved as a JPEG: a phone photo's size."""
    small = open_image(corel_image(3))
    big = small.resize((small.width * factor, small.height * factor), Image.Resampling.BICUBIC)
    path = tmp_path / name
    big.save(path, quality=90, **({"exif": exif} if exif else {}))
    return path, big


def test_a_query_photo_is_decoded_no_larger_than_it_needs(tmp_path):
    path, big = photo_sized(tmp_path, "phone.jpg", 10)  # 3840 x 2560
    image, stored = open_query_image(path, 640)
    assert stored == big.size and image.mode == "RGB"
    assert 640 <= min(image.size) and image.width < big.width / 2  # the decoder's 1/4 here
    assert image.width / image.height == pytest.approx(big.width / big.height, rel=0.01)
    # the same picture as a full decode shrunk to that size, to JPEG decoding's rounding
    full = open_image(path).resize(image.size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    difference = abs(np.asarray(image, np.int16) - np.asarray(full, np.int16)).mean()
    assert difference < 4.0, difference
    small, stored_small = open_query_image(corel_image(3), 640)  # smaller than asked: as it is
    assert stored_small == small.size == open_image(corel_image(3)).size


def test_a_turned_photo_reports_its_size_as_shown(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter clockwise
    path, big = photo_sized(tmp_path, "sideways.jpg", 10, exif.tobytes())
    image, stored = open_query_image(path, 640)
    assert stored == (big.height, big.width)  # as shown, not as stored
    assert (image.width > image.height) == (stored[0] > stored[1]) and min(image.size) >= 640


def test_a_truncated_photo_is_refused_when_decoded_smaller(tmp_path):
    path, _ = photo_sized(tmp_path, "photo.jpg", 10)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"photo\.jpg: image is truncated or corrupt"):
        open_query_image(path, 640)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(20_000, 20_000))
    assert 20_000 * 20_000 > MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match=r"bomb\.png: .*(over the limit|decompression bomb)"):
        open_image(bomb)


def jpeg_with_malformed_exif() -> bytes:
    """A JPEG turned 90 degrees by its EXIF, with a second tag that Pillow cannot write back
    (a signed short of -3): ``ImageOps.exif_transpose`` raises struct.error on it."""
    def entry(tag, kind, value):
        return struct.pack("<HHI", tag, kind, 1) + value
    tiff = (b"II*\x00" + struct.pack("<IH", 8, 2) + entry(0x0112, 3, struct.pack("<HH", 6, 0))
            + entry(0x0101, 8, struct.pack("<hH", -3, 0)) + b"\x00" * 4)
    buffer = io.BytesIO()
    Image.new("RGB", (60, 20), "red").save(buffer, format="JPEG", exif=b"Exif\x00\x00" + tiff)
    return buffer.getvalue()


def test_malformed_exif_keeps_the_picture_as_stored(tmp_path):
    data = jpeg_with_malformed_exif()
    with pytest.raises(struct.error):  # what reached users as a 500 before
        ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    path = tmp_path / "fuzzed.jpg"
    path.write_bytes(data)
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (60, 20)  # kept as stored: orientation not applied


def test_a_16_bit_grey_scan_opens_as_it_looks_not_clipped_to_white(tmp_path):
    import numpy as np

    grey = np.asarray(Image.open(corel_image(3)).convert("L"), dtype=np.uint16)
    Image.fromarray(grey * 257).save(tmp_path / "scan.png")  # the same picture in 16 bits
    Image.fromarray(grey * 257).save(tmp_path / "scan.tif")
    for name in ("scan.png", "scan.tif"):
        opened = np.asarray(open_image(tmp_path / name), dtype=np.int16)
        assert opened.shape == grey.shape + (3,)
        assert np.abs(opened - grey[..., None]).max() <= 1, name  # Pillow's convert gave ~all 255


def test_transparent_pixels_open_as_white_and_the_rest_as_drawn(tmp_path):
    import numpy as np

    photo = Image.open(corel_image(450)).convert("RGBA")
    alpha = np.zeros(photo.size[::-1], dtype=np.uint8)
    alpha[60:180, 100:260] = 255  # a cut-out: the middle kept, the rest transparent
    photo.putalpha(Image.fromarray(alpha))
    photo.save(tmp_path / "cutout.png")
    opened = np.asarray(open_image(tmp_path / "cutout.png"))
    assert (opened[alpha == 0] == 255).all()
    assert (opened[alpha == 255] == np.asarray(photo)[..., :3][alpha == 255]).all()


def test_heic_and_avif_photos_open_and_are_collection_members(tmp_path):
    import numpy as np

    photo = Image.open(corel_image(450)).convert("RGB")
    (tmp_path / "lib" / "dinos").mkdir(parents=True)
    for name, fmt in (("photo.heic", "HEIF"), ("photo.avif", "AVIF")):
        photo.save(tmp_path / "lib" / "dinos" / name, format=fmt, quality=90)
        opened = open_image(tmp_path / "lib" / "dinos" / name)
        assert opened.size == photo.size and opened.mode == "RGB"
        assert np.abs(np.asarray(opened, dtype=np.int16) - np.asarray(photo, dtype=np.int16)).mean() < 4, name
    collection = scan_collection(tmp_path / "lib", "folders")
    assert sorted(r.relpath for r in collection.records) == ["dinos/photo.avif", "dinos/photo.heic"]


def test_file_object_is_accepted():
    image = open_image(io.BytesIO(corel_image(2).read_bytes()))
    assert image.size == open_image(corel_image(2)).size == (384, 256) and image.mode == "RGB"


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CollectionError, match="no images found"):
        scan_collection(tmp_path)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CollectionError, match="collection folder not found"):
        scan_collection(tmp_path / "nowhere")


def test_folder_labels_and_stable_ids(tiny_collection):
    assert len(tiny_collection) == 40
    assert tiny_collection.classes == ["africa", "beach", "buses", "dinosaurs"]
    first = tiny_collection.records[0]
    assert first.relpath == "africa/0.jpg"
    assert first.image_id == stable_id("africa/0.jpg")
    assert len({r.image_id for r in tiny_collection.records}) == 40


def test_non_image_names_are_reported_and_skipped(tmp_path):
    (tmp_path / "a.jpg").symlink_to(corel_image(0))
    (tmp_path / "readme.txt").write_text("hello")
    collection = scan_collection(tmp_path)
    assert [r.relpath for r in collection.records] == ["a.jpg"]
    assert collection.skipped == [("readme.txt", "not an image file name")]


def test_linked_folders_are_part_of_the_collection_and_a_loop_is_walked_once(tmp_path):
    """A collection put together from links to folders elsewhere (another disk): their pictures are
    members, under the link's name; a link back up the tree does not loop or list pictures twice.
    The folders given to add_images are walked the same way."""
    from search.engine.additions import image_files

    elsewhere = tmp_path / "other-disk" / "beach-2019"
    elsewhere.mkdir(parents=True)
    (elsewhere / "150.jpg").symlink_to(corel_image(150))
    root = tmp_path / "collection"
    (root / "africa").mkdir(parents=True)
    (root / "africa" / "1.jpg").symlink_to(corel_image(1))
    (root / "beach").symlink_to(elsewhere, target_is_directory=True)
    (root / "africa" / "up").symlink_to(root, target_is_directory=True)  # a loop
    (root / "a-shortcut").symlink_to(root / "africa", target_is_directory=True)  # listed where it is
    (elsewhere / "again").symlink_to(elsewhere, target_is_directory=True)  # a loop outside
    collection = scan_collection(root, "folders")
    assert [(r.relpath, r.label) for r in collection.records] == [("africa/1.jpg", "africa"),
                                                                   ("beach/150.jpg", "beach")]
    assert [p.relative_to(root).as_posix() for p in image_files([root])] == ["africa/1.jpg", "beach/150.jpg"]


def test_labels_csv_round_trip_and_validation(tmp_path):
    (tmp_path / "1.jpg").symlink_to(corel_image(1))
    (tmp_path / "150.jpg").symlink_to(corel_image(150))
    labels_file = tmp_path / "labels.csv"
    write_labels_csv(labels_file, {"1.jpg": "africa", "150.jpg": "beach"})
    assert read_labels_csv(labels_file) == {"1.jpg": "africa", "150.jpg": "beach"}
    collection = scan_collection(tmp_path, labels_file)
    assert {r.relpath: r.label for r in collection.records} == {"1.jpg": "africa", "150.jpg": "beach"}

    write_labels_csv(labels_file, {"1.jpg": "africa", "missing.jpg": "beach"})
    with pytest.raises(CollectionError, match="missing.jpg"):
        scan_collection(tmp_path, labels_file)


@pytest.mark.parametrize("content", [
    "\ufeffpath,label\r\nafrica\\1.jpg,africa\r\nbeach\\150.jpg,beach\r\n",  # Excel's CSV UTF-8, Windows paths
    "path;label\nafrica/1.jpg;africa\n./beach/150.jpg;beach\n",  # Excel where the decimal mark is a comma
    "africa/1.jpg\tafrica\nbeach/150.jpg\tbeach\n",  # tab-separated, no header
])
def test_labels_saved_by_a_spreadsheet_are_read(tmp_path, content):
    for relpath, number in (("africa/1.jpg", 1), ("beach/150.jpg", 150)):
        (tmp_path / relpath).parent.mkdir(exist_ok=True)
        (tmp_path / relpath).symlink_to(corel_image(number))
    labels_file = tmp_path / "labels.csv"
    labels_file.write_bytes(content.encode("utf-8"))
    collection = scan_collection(tmp_path, labels_file)
    assert {r.relpath: r.label for r in collection.records} == {"africa/1.jpg": "africa", "beach/150.jpg": "beach"}


def test_labels_not_in_utf8_are_a_clear_error(tmp_path):
    (tmp_path / "1.jpg").symlink_to(corel_image(1))
    labels_file = tmp_path / "labels.csv"
    labels_file.write_bytes("path,label\n1.jpg,caf\u00e9\n".encode("cp1252"))  # Excel's plain "CSV" on Windows
    with pytest.raises(CollectionError, match="is not UTF-8 text .*save it as 'CSV UTF-8'"):
        scan_collection(tmp_path, labels_file)


def test_excluded_label_stays_in_collection_unlabelled(tiny_collection_dir):
    collection = scan_collection(tiny_collection_dir, "folders", exclude_labels=("beach",))
    assert len(collection) == 40
    assert "beach" not in collection.classes
    assert len(collection.labelled()) == 30
