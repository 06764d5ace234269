"""Files of the active index served by id (never by path): images, cached thumbnails,
and the correspondence picture of a search result."""
from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings

from .conf import engine_config
from .engine.errors import EngineError
from .engine.images import open_image
from .engine.index import MANIFEST, TABLE, active_build
from .models import SearchJob

_table: dict = {"build": None, "rows": None, "root": None}


def indexed_images() -> tuple[Path, Path, dict[str, dict]]:
    """(active build, collection root, {image_id: {"path", "label"}}), re-read when the build changes."""
    build = active_build(engine_config().index_root)
    if _table["build"] != build:
        manifest = json.loads((build / MANIFEST).read_text())
        rows = {row["id"]: row for row in json.loads((build / TABLE).read_text())}
        _table.update(build=build, rows=rows, root=Path(manifest["collection_root"]))
    return _table["build"], _table["root"], _table["rows"]


def indexed_image_path(image_id: str) -> Path | None:
    _, root, rows = indexed_images()
    row = rows.get(image_id)
    return None if row is None else root / row["path"]


def thumbnail(image_id: str, max_side: int = 256) -> Path | None:
    """A cached JPEG thumbnail of an indexed image, under MEDIA_ROOT/thumbs/."""
    source = indexed_image_path(image_id)
    if source is None:
        return None
    out = Path(settings.MEDIA_ROOT) / "thumbs" / str(max_side) / f"{image_id}.jpg"
    if not out.is_file():
        image = open_image(source)
        image.thumbnail((max_side, max_side))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        image.save(tmp, format="JPEG", quality=85)
        tmp.replace(out)
    return out


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


def add_to_collection(images, label: str) -> tuple[Path, list[Path]]:
    """Save decoded images as JPEGs under ``<active collection root>/<label>/`` (never
    overwriting); returns the folder and the files written."""
    _, root, _ = indexed_images()
    folder = root / label
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, image in images:
        stem = Path(name).stem.replace("/", "_")[:80] or "image"
        path, n = folder / f"{stem}.jpg", 1
        while path.exists():
            n += 1
            path = folder / f"{stem}-{n}.jpg"
        image.save(path, format="JPEG", quality=95)
        written.append(path)
    return folder, written
