"""What an interrupted build run had extracted, so the next run resumes where it stopped.

While a build extracts global vectors, each chunk of images is saved under the index root's
``resume/`` folder as soon as it is done (the local-feature store does the same:
``local_store.build_local_store``), keyed by what made it: the model and the describer. A
later run reuses those rows like the active build's, when the image's file is unchanged;
a completed build removes the folder (``layout.clear_resume``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from . import layout
from .errors import SearchIndexError
from .stored import load_array

def global_key(model_checksum: str, describer_name: str | None) -> str:
    return hashlib.sha1(f"{model_checksum}|{describer_name}".encode()).hexdigest()


@dataclass
class SavedRows:
    """Global vectors saved by an interrupted run, read like a build's (``positions``,
    ``fingerprints``, ``row_vectors``) so the two are reused alike."""
    image_ids: list[str]
    fingerprints: list[str]
    vectors: dict[str, np.ndarray]

    @cached_property
    def positions(self) -> dict[str, int]:
        return {image_id: p for p, image_id in enumerate(self.image_ids)}

    def row_vectors(self, variant: str, rows) -> np.ndarray:
        return self.vectors[variant][np.asarray(rows, dtype=np.int64)]


def saved_global_rows(folder: Path, kinds: set[str]) -> SavedRows | None:
    """Everything saved under ``folder`` that holds the ``kinds`` of vectors; None: nothing."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    ids, prints, parts = [], [], {kind: [] for kind in kinds}
    for chunk in sorted(folder.iterdir()):
        if chunk.name.endswith(layout.PARTIAL_SUFFIX) or not (chunk / layout.TABLE).is_file():
            continue
        try:
            table = layout.read_json(chunk / layout.TABLE, list)
            arrays = {kind: load_array(chunk / f"{kind}.npy") for kind in kinds}
        except SearchIndexError:
            continue  # damaged: those images are extracted again
        if any(len(a) != len(table) for a in arrays.values()):
            continue
        ids += [row["id"] for row in table]
        prints += [row["fingerprint"] for row in table]
        for kind, array in arrays.items():
            parts[kind].append(array)
    if not ids:
        return None
    return SavedRows(ids, prints, {kind: np.concatenate(p).astype(np.float32) for kind, p in parts.items()})


def save_global_rows(folder: Path, image_ids: list[str], fingerprints: list[str], vectors: dict[str, np.ndarray]) -> None:
    """One chunk of freshly extracted vectors, written aside and renamed into place."""
    if not image_ids:
        return
    partial, final = layout.new_folder_pair(Path(folder))
    for kind, array in vectors.items():
        np.save(partial / f"{kind}.npy", array)
    (partial / layout.TABLE).write_text(json.dumps([{"id": i, "fingerprint": f} for i, f in zip(image_ids, fingerprints)]))
    layout.finish_build(partial, final)
