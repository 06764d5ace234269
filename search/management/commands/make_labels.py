"""Write a path,label CSV for a collection whose labels follow a rule."""
import re
from pathlib import Path

from django.core.management.base import CommandError

from ...engine.collection import folder_labels, scan_collection, write_labels_csv
from ..base import EngineCommand

PRESETS = {
    # Corel-1k (Wang / SIMPLIcity): image N belongs to class N // 100, in this order.
    "corel1k": {"stem_divisor": 100, "class_names": [
        "africa", "beach", "buildings", "buses", "dinosaurs",
        "elephants", "flowers", "horses", "mountains", "food"]},
}


class Command(EngineCommand):
    help = ("Write a path,label CSV: from sub-folder names, or from the number that ends each file name "
            "(class = number // divisor, optionally named: image07.jpg, IMG_0007.jpg and 7.jpg are number 7). "
            "--preset corel1k writes Corel-1k's labels.")

    def add_arguments(self, parser):
        parser.add_argument("folder", type=Path, help="the collection folder")
        parser.add_argument("--out", type=Path, required=True, help="CSV to write")
        parser.add_argument("--preset", choices=sorted(PRESETS), help="a known collection's rule")
        parser.add_argument("--stem-divisor", type=int,
                            help="class = the number that ends the file name (without extension) // this")
        parser.add_argument("--class-names", help="comma-separated names for classes 0, 1, 2, ...")

    def handle(self, *args, folder, out, preset, stem_divisor, class_names, **options):
        rule = dict(PRESETS[preset]) if preset else {}
        if stem_divisor:
            rule["stem_divisor"] = stem_divisor
        if class_names:
            rule["class_names"] = [n.strip() for n in class_names.split(",")]
        collection = scan_collection(folder)
        if rule.get("stem_divisor"):
            labels = {}
            names = rule.get("class_names")
            for record in collection.records:
                digits = re.search(r"(\d+)$", Path(record.relpath).stem)
                if not digits:
                    raise CommandError(f"{record.relpath}: the file name does not end in a number; "
                                       "cannot apply the rule")
                number = int(digits.group(1)) // rule["stem_divisor"]
                if names and number >= len(names):
                    raise CommandError(f"{record.relpath}: class {number} has no name in --class-names")
                labels[record.relpath] = names[number] if names else str(number)
        else:
            labels = folder_labels(r.relpath for r in collection.records)
            if not labels:
                raise CommandError(f"{folder}: no sub-folders to take labels from; give --stem-divisor or --preset")
        write_labels_csv(out, labels)
        classes = sorted(set(labels.values()))
        self.stdout.write(f"wrote {len(labels)} labels in {len(classes)} classes to {out}")
