"""Every setting that takes a name or a range, checked at once when a program starts.

Each setting is also checked where it is read, but some are read late: a misspelt class vote by
the first search, a misspelt augmentation after a training has loaded its pictures, a RANSAC
method by the first verification. The site (Django's system checks: ``manage.py check``,
``runserver``, ``migrate`` and every engine command) and each Celery worker ask here first, so
such a setting stops the program at its start with the variable's name instead.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping

from .config import TRAIN_AUGMENTS, EngineConfig
from .errors import EngineError
from .methods import VARIANTS, parse_vote_variant

# ``RETRIEVAL_*`` variables that are not engine settings (named without the prefix): read by
# scripts/bootstrap.sh and scripts/test.sh (REQUIREMENTS, VENV), scripts/gpu_benchmark.sh (PYTHON)
# and the tests (DATASETS).
OTHER_VARIABLES = ("DATASETS", "PYTHON", "REQUIREMENTS", "VENV")

# The names the engine's modules accept, spelt out here because the web process checks them and
# must not load torch, OpenCV or scikit-learn to do it (tests/fast compares them with the modules').
BACKBONE_NAMES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18")  # backbones.BACKBONES
COARSE_BACKENDS = ("auto", "balltree", "faiss")  # "auto" and coarse_backends.BACKENDS
RANSAC_METHOD_NAMES = ("ransac", "usac_magsac", "usac_accurate")  # verification.RANSAC_METHODS
PRESCORE_DTYPES = ("auto", "float32", "bfloat16")  # "auto" and verification.PRESCORE_DTYPES
DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)?")  # what model.pick_device is given

# The settings that count something and make no sense below 1 (or below 0: "0: off" settings).
AT_LEAST_ONE = ("image_size", "batch_size", "epochs", "pca_dim", "n_candidates", "top_k", "leaf_size",
                "attention_epochs", "local_max_keypoints", "local_base_max_side", "local_pca_dim",
                "min_inliers", "ransac_max_iters", "verify_block_size", "checkpoint_images",
                "fallback_class_voters", "turn_candidates", "faiss_nprobe", "local_read_threads")
AT_LEAST_ZERO = ("query_expansion", "query_expansion_alpha", "query_crops", "train_max_images",
                 "probe_below_class_size",
                 "average_last_epochs", "verify_top", "prescore_keypoints", "prescore_grid",
                 "prescore_candidate_keypoints", "local_query_min_side", "faiss_lists", "num_threads",
                 "malloc_threshold_mb", "shards", "rerank_unsure", "confidence_pool", "faiss_parts")
# Shares and probabilities from 0 to 1: (name, whether 0 itself is allowed, whether 1 is).
FRACTIONS = (("val_fraction", False, False), ("query_crop_share", False, True), ("hybrid_weight", True, True),
             ("min_confidence", True, True), ("rerank_confidence", True, True), ("match_ratio", False, True))


def setting_problems(config: EngineConfig) -> dict[str, str]:
    """Each setting that cannot work, by field name, with what it takes instead."""
    problems: dict[str, str] = {}

    def one_of(name: str, allowed) -> None:
        if getattr(config, name) not in allowed:
            problems[name] = f"takes one of {', '.join(allowed)}"

    def parses(name: str, read) -> None:
        try:
            read()
        except (ValueError, EngineError) as exc:
            problems[name] = str(exc).removeprefix(f"{name} ")

    one_of("backbone", BACKBONE_NAMES)
    one_of("coarse_backend", COARSE_BACKENDS)
    one_of("ransac_method", RANSAC_METHOD_NAMES)
    one_of("prescore_dtype", PRESCORE_DTYPES)
    one_of("turn_gate_variant", VARIANTS)
    one_of("train_augment", TRAIN_AUGMENTS)
    parses("class_vote_variant", lambda: parse_vote_variant(config.class_vote_variant))
    parses("query_turns", lambda: config.turn_angles)
    if not DEVICE.fullmatch(config.device):
        problems["device"] = "takes auto, cpu, cuda or cuda:N"
    parses("local_scales", lambda: _positive_scales(config.local_scales))
    for name in AT_LEAST_ONE:
        if getattr(config, name) < 1:
            problems[name] = "takes 1 or more"
    for name in AT_LEAST_ZERO:
        if getattr(config, name) < 0:
            problems[name] = "takes 0 or more"
    for name, zero_allowed, one_allowed in FRACTIONS:
        value = getattr(config, name)
        if not (0 <= value <= 1) or (value == 0 and not zero_allowed) or (value == 1 and not one_allowed):
            problems[name] = (f"takes a value {'from' if zero_allowed else 'above'} 0 "
                              f"{'and up to' if one_allowed else 'and below'} 1")
    return problems


def _positive_scales(text: str) -> None:
    scales = [float(s) for s in text.split(",") if s.strip()]
    if not scales or min(scales) <= 0:
        raise ValueError("takes one or more comma-separated scales above 0")


def describe_problems(config: EngineConfig, prefix: str = "RETRIEVAL_") -> list[str]:
    """The problems as a person fixes them: by environment variable, with the value it has."""
    return [f"{prefix}{name.upper()}={str(getattr(config, name))!r} {message}"
            for name, message in setting_problems(config).items()]


def unknown_variables(environ: Mapping[str, str], prefix: str = "RETRIEVAL_") -> list[str]:
    """Each ``RETRIEVAL_*`` variable that names no setting, with the one it was likely meant for:
    ``EngineConfig.from_env`` reads only the names it knows, so a misspelt or retired one would
    otherwise be ignored without a word and the program run on the default."""
    # names without the prefix, which every one shares and would make any two look alike to difflib
    known = sorted({f.name.upper() for f in dataclasses.fields(EngineConfig)} | set(OTHER_VARIABLES))
    unknown = []
    for name in sorted(n for n in environ if n.startswith(prefix) and n.removeprefix(prefix) not in known):
        close = difflib.get_close_matches(name.removeprefix(prefix), known, n=1)
        guess = f" (did you mean {prefix}{close[0]}?)" if close else ""
        unknown.append(f"{name} is not a setting{guess}: it is ignored")
    return unknown
