"""Zip archives of pictures uploaded by staff (bulk ingest): read defensively, unpacked flat.

An archive's member names and declared sizes come from whoever made it, so nothing is trusted:
no member name becomes a path (each picture is written under its own base name, made unique, in
the one folder given), a member's bytes are counted as they are read (a bomb stops at the limit,
whatever it declares), and the number of pictures and their total size are capped. The pictures
are not decoded here: the 'add' run decodes each and skips, with the reason, what is no picture.
"""
from __future__ import annotations

import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .engine.images import is_image_name

CHUNK = 1 << 20
# what a damaged or unsupported archive raises while it is read (RuntimeError: a password needed)
UNREADABLE = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)


class ArchiveError(ValueError):
    """An archive that cannot be taken in; the message is for the person who sent it."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_images: int
    max_image_bytes: int
    max_total_bytes: int


@dataclass
class Unpacked:
    files: list[Path] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # members that are not pictures by name


def is_zip(upload) -> bool:
    """Whether an uploaded file is a zip archive (by its content, not its name)."""
    position = upload.tell()
    try:
        return zipfile.is_zipfile(upload)
    finally:
        upload.seek(position)


def picture_members(archive: zipfile.ZipFile, name: str, limits: ArchiveLimits) -> tuple[list[zipfile.ZipInfo], list[str]]:
    """The members to unpack and the names of those ignored, after the checks that need no
    reading: encryption, the number of pictures, their declared sizes."""
    members, ignored = [], []
    for info in archive.infolist():
        path = PurePosixPath(info.filename.replace("\\", "/"))
        # folders, macOS resource forks and hidden files; '..' in a name does nothing (unpacked flat)
        if info.is_dir() or "__MACOSX" in path.parts or path.name.startswith("."):
            continue
        if not is_image_name(Path(path.name)):
            ignored.append(info.filename)
            continue
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{name} is encrypted; send it without a password.")
        if info.file_size > limits.max_image_bytes:
            raise ArchiveError(f"{name}: {info.filename} is over the limit of "
                               f"{limits.max_image_bytes / 2**20:.2f} MB per picture.")
        members.append(info)
    if not members:
        raise ArchiveError(f"{name} holds no pictures (JPEG, PNG, WebP, ... files).")
    if len(members) > limits.max_images:
        raise ArchiveError(f"{name} holds {len(members)} pictures; at most {limits.max_images} are taken "
                           "at once. Split it.")
    if sum(m.file_size for m in members) > limits.max_total_bytes:
        raise ArchiveError(f"{name} unpacks to more than {limits.max_total_bytes / 2**20:.0f} MB of pictures.")
    return members, ignored


def check_archive(upload, name: str, limits: ArchiveLimits) -> None:
    """Refuse an archive that is damaged or past the limits, before anything is written."""
    try:
        with zipfile.ZipFile(upload) as archive:
            picture_members(archive, name, limits)
    except (*UNREADABLE, OSError) as exc:
        raise ArchiveError(f"{name} is not a readable zip archive ({exc}).") from exc
    finally:
        upload.seek(0)


def unpack_pictures(upload, name: str, folder: Path, limits: ArchiveLimits, taken: set[str]) -> Unpacked:
    """Write the archive's pictures into ``folder`` under unique base names (``taken`` holds the
    names used so far); counts every byte as it is read."""
    result = Unpacked()
    total = 0
    try:
        with zipfile.ZipFile(upload) as archive:
            members, result.ignored = picture_members(archive, name, limits)
            for info in members:
                target = folder / unique_name(PurePosixPath(info.filename.replace("\\", "/")).name, taken)
                written = 0
                with archive.open(info) as source, target.open("wb") as out:
                    while chunk := source.read(CHUNK):
                        written += len(chunk)
                        total += len(chunk)
                        if written > limits.max_image_bytes:
                            raise ArchiveError(f"{name}: {info.filename} unpacks to more than it declares "
                                               f"and past {limits.max_image_bytes / 2**20:.2f} MB.")
                        if total > limits.max_total_bytes:
                            raise ArchiveError(f"{name} unpacks to more than "
                                               f"{limits.max_total_bytes / 2**20:.0f} MB of pictures.")
                        out.write(chunk)
                result.files.append(target)
    except UNREADABLE as exc:  # a full disk (OSError) is not the archive's fault: it goes up as it is
        raise ArchiveError(f"{name} could not be unpacked ({exc}).") from exc
    return result


def unique_name(name: str, taken: set[str]) -> str:
    """A safe file name for ``name`` (letters, digits, '.', '-', '_'), not yet in ``taken``."""
    stem, suffix = Path(name).stem, Path(name).suffix.lower()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:80] or "image"
    candidate, n = f"{stem}{suffix}", 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{stem}-{n}{suffix}"
    taken.add(candidate.lower())
    return candidate
