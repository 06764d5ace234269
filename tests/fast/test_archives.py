"""Zip archives staff upload: unpacked flat under safe unique names whatever the member names
say, with the pictures' number and sizes capped, counted as they are read."""
import io
import zipfile

import pytest

from search.archives import ArchiveError, ArchiveLimits, check_archive, is_zip, unique_name, unpack_pictures

LIMITS = ArchiveLimits(max_images=10, max_image_bytes=1000, max_total_bytes=2500)


def archive(members: dict, compression=zipfile.ZIP_DEFLATED) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    buffer.seek(0)
    return buffer


def test_pictures_are_unpacked_flat_under_unique_safe_names(tmp_path):
    members = {"a/photo.jpg": b"1" * 10, "b/photo.JPG": b"2" * 10, "../../../etc/evil.png": b"3" * 10,
               "c/we ird;name$.webp": b"4" * 10, "c/readme.txt": b"text", "__MACOSX/a/._photo.jpg": b"x",
               "a/.DS_Store": b"x", "a/": b""}
    upload = archive(members)
    assert is_zip(upload) and upload.tell() == 0
    check_archive(upload, "set.zip", LIMITS)
    unpacked = unpack_pictures(upload, "set.zip", tmp_path, LIMITS, set())
    assert sorted(p.name for p in unpacked.files) == ["evil.png", "photo-2.jpg", "photo.jpg", "we_ird_name.webp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in unpacked.files)  # nowhere else
    assert unpacked.ignored == ["c/readme.txt"]
    assert (tmp_path / "photo-2.jpg").read_bytes() == b"2" * 10
    assert not is_zip(io.BytesIO(b"\xff\xd8\xff not a zip"))


@pytest.mark.parametrize("members, message", [
    ({f"{n}.jpg": b"x" for n in range(11)}, "holds 11 pictures; at most 10"),
    ({"big.jpg": bytes(5000)}, "over the limit of 0.00 MB per picture"),  # 5 KB of zeros pack to a few bytes
    ({f"{n}.jpg": bytes(900) for n in range(3)}, "unpacks to more than 0 MB of pictures"),
    ({"notes.txt": b"hello"}, "holds no pictures"),
])
def test_archives_past_the_limits_are_refused_before_anything_is_written(tmp_path, members, message):
    with pytest.raises(ArchiveError, match=message):
        check_archive(archive(members), "set.zip", LIMITS)
    with pytest.raises(ArchiveError, match=message):
        unpack_pictures(archive(members), "set.zip", tmp_path, LIMITS, set())
    assert not any(tmp_path.iterdir())


def test_damaged_and_encrypted_archives_are_refused(tmp_path):
    whole = archive({"a.jpg": b"picture bytes " * 20}, zipfile.ZIP_STORED).getvalue()
    with pytest.raises(ArchiveError, match="not a readable zip archive"):
        check_archive(io.BytesIO(whole[:-30]), "cut.zip", LIMITS)
    damaged = bytearray(whole)
    damaged[50:60] = bytes(10)  # inside the member's data: only its CRC tells
    check_archive(io.BytesIO(bytes(damaged)), "bad.zip", LIMITS)
    with pytest.raises(ArchiveError, match="bad.zip could not be unpacked"):
        unpack_pictures(io.BytesIO(bytes(damaged)), "bad.zip", tmp_path, LIMITS, set())
    encrypted = bytearray(whole)
    encrypted[whole.index(b"PK\x01\x02") + 8] |= 1  # the central directory's 'encrypted' flag
    encrypted[whole.index(b"PK\x03\x04") + 6] |= 1
    with pytest.raises(ArchiveError, match="is encrypted"):
        check_archive(io.BytesIO(bytes(encrypted)), "secret.zip", LIMITS)


def test_unique_names_ignore_case_and_keep_the_extension():
    taken = set()
    assert [unique_name(n, taken) for n in ("A.jpg", "a.JPG", "...", "x/y.png")] == ["A.jpg", "a-2.jpg", "image",
                                                                                       "y.png"]
