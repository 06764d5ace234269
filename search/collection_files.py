"""Files of the active index served by id (never by path): images, cached thumbnails,
and the correspondence picture of a search result."""
from __future__ import annotations

from pathlib import Path

from django.conf import settings

from .conf import engine_config
from .engine import layout
from .engine.errors import EngineError
from .engine.images import open_image
from .models import SearchJob


def active_catalog() -> layout.Catalog:
    """The active build's images by id (read once per build)."""
    return layout.catalog(engine_config().index_root)


def indexed_image_path(image_id: str) -> Path | None:
    """The file of an indexed image; None for one removed from search (remove_images)."""
    if image_id in layout.read_removed(engine_config().index_root):
        return None
    return active_catalog().path_of(image_id)


def searchable_ids(catalog: layout.Catalog) -> list[str]:
    """The image ids of the active build that are not removed from search, in table order."""
    removed = layout.read_removed(engine_config().index_root)
    return [image_id for image_id in catalog.rows if image_id not in removed]


def searchable_sample(catalog: layout.Catalog, size: int) -> list[str]:
    """The first ``size`` image ids of the active build that are not removed from search."""
    return searchable_ids(catalog)[:size]


def remove_from_search(refs: list[str]) -> int:
    """Take images (ids, or paths relative to the collection root) out of search at once, as the
    ``remove_images`` command does; returns how many were not removed already."""
    return layout.remove_images(engine_config().index_root, refs)[0]


def restore_to_search(image_ids: list[str]) -> int:
    """Put removed images back (at once while the active build holds them); returns how many."""
    return layout.restore_images(engine_config().index_root, image_ids)


def browse(catalog: layout.Catalog, label: str | None = None, text: str = "") -> list[dict]:
    """The searchable images of the active build, by path: those with ``label`` (None: all) whose
    path contains ``text`` (case-insensitive)."""
    removed = layout.read_removed(engine_config().index_root)
    text = text.lower()
    rows = [row for image_id, row in catalog.rows.items()
            if image_id not in removed and (label is None or row["label"] == label) and text in row["path"].lower()]
    return sorted(rows, key=lambda row: row["path"])


def image_facts(image_id: str) -> dict | None:
    """What the image page shows of an indexed image: its file name, label, pixel size and bytes
    (the header only is read); None when it is not searchable."""
    from PIL import Image, UnidentifiedImageError

    path = indexed_image_path(image_id)
    if path is None or not path.is_file():
        return None
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError):
        width = height = None
    return {"id": image_id, "name": path.name, "path": path, "label": active_catalog().label_of(image_id),
            "width": width, "height": height, "bytes": path.stat().st_size}


def as_query(image_id: str):
    """An indexed image as a query upload ("search with this image"), normalised like an upload
    and no larger than the search form takes."""
    import io

    from django.core.files.uploadedfile import SimpleUploadedFile

    path = indexed_image_path(image_id)
    if path is None or not path.is_file():
        return None
    image = open_image(path)
    image.thumbnail((settings.QUERY_FROM_COLLECTION_MAX_SIDE,) * 2)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return SimpleUploadedFile(f"{path.stem[:80]}.jpg", buffer.getvalue(), content_type="image/jpeg")


def removed_images(catalog: layout.Catalog) -> list[dict]:
    """The images taken out of search, with their paths where the active build holds them."""
    removed = layout.read_removed(engine_config().index_root)
    return [{"id": image_id, "path": (catalog.rows.get(image_id) or {}).get("path", "(not in this build)")}
            for image_id in sorted(removed)]


# what every current browser shows in an <img>; the rest (HEIC, TIFF) is shown as a JPEG of it
BROWSER_FORMATS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".avif", ".bmp"})


def browsers_show(path: Path) -> bool:
    return path.suffix.lower() in BROWSER_FORMATS


def thumbnail(image_id: str, max_side: int = 256) -> Path | None:
    """A cached JPEG thumbnail of an indexed image, under MEDIA_ROOT/thumbs/."""
    source = indexed_image_path(image_id)
    if source is None:
        return None
    out = thumbnail_file(image_id, max_side)
    if not out.is_file():
        image = open_image(source)
        image.thumbnail((max_side, max_side))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        image.save(tmp, format="JPEG", quality=85)
        tmp.replace(out)
    return out


def make_thumbnails(progress=None) -> tuple[int, list[tuple[str, str]]]:
    """The thumbnails the active build's searchable images lack, made now (after a build, so
    that no gallery shows a blank while one is made); returns how many were made and the images
    that could not be read."""
    ids = searchable_ids(active_catalog())
    made, failed = 0, []
    for done, image_id in enumerate(ids, 1):
        if not thumbnail_file(image_id).is_file():
            try:
                thumbnail(image_id)
                made += 1
            except (EngineError, OSError) as exc:
                failed.append((image_id, str(exc)))
        if progress is not None:
            progress("thumbnails", done, len(ids))
    return made, failed


def thumbnail_file(image_id: str, max_side: int = 256) -> Path:
    return Path(settings.MEDIA_ROOT) / "thumbs" / str(max_side) / f"{image_id}.jpg"


def correspondence_png(job: SearchJob, result: dict) -> bytes:
    """The query and one result side by side with the inlier lines drawn."""
    import io

    from PIL import Image

    from .engine.drawing import draw_correspondences

    source = indexed_image_path(result["image_id"])
    if source is None:
        raise EngineError(f"image {result['image_id']} is not in the active index any more")
    query, other = open_image(job.query_image.path), open_image(source)
    caption = (f"{result['inliers']} inliers" if result["stage"] == "verified"
               else "coarse fallback: not verified")
    rgb = draw_correspondences(query, other, result["query_points"], result["result_points"], caption=caption)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def stage_uploads(items) -> tuple[Path, list[str]]:
    """Save a valid upload form's pictures (decoded ones as JPEGs, archives unpacked) in a fresh
    folder under ``<data dir>/incoming/`` for an 'add' run to take in (add_images copies them
    under the index root; the collection folder may be read-only). Returns the folder and notes
    for the run's log; an archive that fails to unpack leaves nothing behind."""
    import shutil
    import uuid

    from .archives import ArchiveError, unique_name, unpack_pictures
    from .forms import archive_limits

    folder = engine_config().data_dir / "incoming" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    notes, taken = [], set()
    try:
        for kind, name, content in items:
            if kind == "zip":
                unpacked = unpack_pictures(content, name, folder, archive_limits(), taken)
                notes.append(f"archive {name}: {len(unpacked.files)} picture(s) unpacked"
                             + (f", {len(unpacked.ignored)} other file(s) ignored" if unpacked.ignored else ""))
            else:
                content.save(folder / unique_name(Path(name).stem + ".jpg", taken), format="JPEG", quality=95)
    except (ArchiveError, OSError):
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, notes
