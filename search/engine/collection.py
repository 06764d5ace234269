"""A collection is a folder of images with optional class labels.

Labels come from one sub-folder per class, or from a CSV of ``path,label``
rows (paths relative to the collection folder). Every image gets a stable id
derived from its relative path, so the same file keeps its id across
reindexing and machines.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CollectionError
from .images import is_image_name


@dataclass(frozen=True)
class ImageRecord:
    image_id: str
    relpath: str  # POSIX path relative to the collection root
    path: Path  # absolute path
    label: str | None = None


def stable_id(relpath: str) -> str:
    """Twelve hex digits of SHA-1 over the relative path: short, stable, collision-free in practice."""
    return hashlib.sha1(relpath.encode("utf-8")).hexdigest()[:12]


@dataclass
class Collection:
    root: Path
    records: list[ImageRecord]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relpath, reason)

    @property
    def classes(self) -> list[str]:
        return sorted({r.label for r in self.records if r.label is not None})

    def labelled(self) -> list[ImageRecord]:
        return [r for r in self.records if r.label is not None]

    def by_relpath(self) -> dict[str, ImageRecord]:
        return {r.relpath: r for r in self.records}

    def subset(self, relpaths) -> "Collection":
        """The records named by ``relpaths`` (a list-file's lines), in that order."""
        table = self.by_relpath()
        missing = [p for p in relpaths if p not in table]
        if missing:
            raise CollectionError(
                f"{len(missing)} listed image(s) are not in {self.root}, e.g. {missing[:3]}")
        return Collection(self.root, [table[p] for p in relpaths], list(self.skipped))

    def __len__(self) -> int:
        return len(self.records)


def folder_labels(relpaths) -> dict[str, str]:
    """Labels by sub-folder: the first path component of each path that has one."""
    return {p: p.split("/", 1)[0] for p in relpaths if "/" in p}


def read_list_file(path: Path) -> list[str]:
    """Relative paths, one per line (Caltech's ``train.txt`` / ``test.txt`` format)."""
    path = Path(path)
    if not path.is_file():
        raise CollectionError(f"list file not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def seeded_sample(ids, limit: int | None) -> list:
    """The first ``limit`` of ``ids`` shuffled with seed 0 (all of them, in order, when ``limit`` is
    0 or None): ``evaluate --limit``'s queries, so that a benchmark script scores the same ones."""
    ids = list(ids)
    if limit:
        random.Random(0).shuffle(ids)
        ids = ids[:limit]
    return ids


def read_labels_csv(path: Path) -> dict[str, str]:
    """``path,label`` rows, also as spreadsheets save them: a byte-order mark (Excel's "CSV UTF-8"),
    semicolons or tabs between the columns (Excel where the decimal mark is a comma), and Windows
    paths (``africa\\1.jpg``) or ``./`` in front; paths are matched as the collection lists them."""
    path = Path(path)
    if not path.is_file():
        raise CollectionError(f"labels file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CollectionError(f"{path} is not UTF-8 text (byte {exc.start}): save it as 'CSV UTF-8'") from exc
    first = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = max(",;\t", key=first.count)  # a comma where none is on the line: the first of equals
    labels = {}
    for row_number, row in enumerate(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), start=1):
        if not row or (row_number == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]):
            continue
        if len(row) < 2 or not row[1].strip():
            # the row itself is not quoted: the file may not be a labels file at all
            raise CollectionError(f"{path}:{row_number}: expected two columns, 'path,label', "
                                  f"with a label in the second")
        relpath = row[0].strip().replace("\\", "/")
        labels[relpath[2:] if relpath.startswith("./") else relpath] = row[1].strip()
    return labels


def write_labels_csv(path: Path, labels: dict[str, str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for relpath in sorted(labels):
            writer.writerow([relpath, labels[relpath]])


def files_under(root: Path) -> list[Path]:
    """Every file under ``root``, sorted, through links to folders outside it too: a collection put
    together from links to folders on other disks lost them silently, since pathlib's ``rglob``
    does not go into linked folders (before Python 3.13). A link to a folder inside ``root`` is
    not followed (its files are listed where they are), and each folder is walked once, so links
    that loop end there."""
    inside = Path(root).resolve()
    found, walked = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in walked:
            subfolders.clear()
            continue
        walked.add((stat.st_dev, stat.st_ino))
        subfolders[:] = sorted(name for name in subfolders if not _links_inside(Path(folder) / name, inside))
        found += [Path(folder) / name for name in files]
    return sorted(path for path in found if path.is_file())


def _links_inside(folder: Path, root: Path) -> bool:
    return folder.is_symlink() and folder.resolve().is_relative_to(root)


def scan_collection(root: Path, labels: str | Path | None = None,
                    exclude_labels: tuple[str, ...] = ()) -> Collection:
    """List the images under ``root``.

    ``labels`` is ``None`` or ``"none"`` (no labels), ``"folders"`` (the first path
    component is the class) or the path of a ``path,label`` CSV. Images whose
    label is in ``exclude_labels`` stay in the collection, unlabelled (e.g.
    Caltech's clutter class). Files that are not images by name are skipped
    and reported; whether an image decodes is found out when it is read.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise CollectionError(f"collection folder not found: {root}")
    skipped: list[tuple[str, str]] = []
    relpaths = []
    for path in files_under(root):
        relpath = path.relative_to(root).as_posix()
        if path.name.startswith("."):
            continue
        if is_image_name(path):
            relpaths.append(relpath)
        else:
            skipped.append((relpath, "not an image file name"))
    if not relpaths:
        raise CollectionError(f"no images found in {root}")

    if labels is None or str(labels) == "none":
        label_of = {}
    elif str(labels) == "folders":
        label_of = folder_labels(relpaths)
    else:
        label_of = read_labels_csv(Path(labels))
        unknown = sorted(set(label_of) - set(relpaths))
        if unknown:
            raise CollectionError(
                f"{labels}: {len(unknown)} labelled path(s) are not images in {root}, e.g. {unknown[:3]}")
    excluded = set(exclude_labels)
    records = []
    for relpath in relpaths:
        label = label_of.get(relpath)
        if label in excluded:
            label = None
        records.append(ImageRecord(stable_id(relpath), relpath, root / relpath, label))
    return Collection(root, records, skipped)
