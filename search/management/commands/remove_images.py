from pathlib import Path

from django.core.management.base import CommandError

from ...engine import layout
from ...engine.collection import stable_id
from ..base import EngineCommand


class Command(EngineCommand):
    help = ("Take images out of search at once: by id, by path relative to the collection root, or by absolute "
            "path. Every worker's next query leaves them out, and later builds skip them (the files stay where "
            "they are). --restore puts them back: at once while the active build still holds them, otherwise "
            "with the next build.")

    def add_arguments(self, parser):
        parser.add_argument("images", nargs="+", help="image ids or paths")
        parser.add_argument("--restore", action="store_true", help="put these images back into search")
        parser.add_argument("--index-dir", type=Path, help="index root (default: <data dir>/index)")

    def handle(self, *args, images, restore, index_dir, **options):
        root = index_dir or self.config(options).index_root
        if not restore:
            newly, total = layout.remove_images(root, images)
            self.stdout.write(self.style.SUCCESS(
                f"removed {newly} images from search ({total} removed in all); "
                "searches leave them out from now on, and later builds skip them"))
            return
        removed = layout.read_removed(root)
        collection_root = layout.catalog(root).collection_root
        ids = {}
        for ref in images:
            relpath = None if ref in removed else layout.relative_to_collection(ref, collection_root)
            if ref not in removed and relpath is None:
                raise CommandError(f"{ref} is not under the collection root {collection_root}")
            ids[ref] = ref if ref in removed else stable_id(relpath)
        not_removed = [ref for ref, image_id in ids.items() if image_id not in removed]
        if not_removed:
            raise CommandError(f"not removed: {', '.join(not_removed)}")
        restored = layout.restore_images(root, ids.values())
        self.stdout.write(self.style.SUCCESS(f"restored {restored} images; {len(removed) - restored} remain removed"))
