"""Sharded search on the workers (search/engine/shards.py): a shard's workers answer the stages
of searches on their own shard build (``run_shard_stage``, the ``shard_stage`` task), and the
worker coordinating a search sends each stage to every shard's queue as one Celery group and
waits for all of them (``celery_fan_out``).

The coordinator waits inside its task (not a chord) so that the job keeps one owner: its
heartbeat, progress and failure stay with the search task. That is safe because the shard
stages run on other queues, served by other workers; a stage not answered within
SHARD_STAGE_TIMEOUT_S fails the search with a message naming the queues."""
from __future__ import annotations

import logging
from pathlib import Path

from celery import group
from celery.exceptions import TimeoutError as CeleryTimeout
from django.conf import settings

from .conf import engine_config
from .engine import layout
from .engine.errors import EngineError, SearchIndexError
from .engine.shards import FanOut, Shard, requested_split, shard_build_for
from .queue import SHARD_STAGE, shard_queue

log = logging.getLogger(__name__)

# The open shard builds of each shard this worker serves, by build: the active split's, and the
# one before while searches begun on it finish.
_shards: dict[int, dict[Path, Shard]] = {}
KEEP_OPEN = 2


def current_shard(number: int, split: str | None = None) -> Shard:
    """Shard ``number`` on its build of ``split`` (default: its active build)."""
    config = engine_config()
    root = config.shard_root(number)
    held = _shards.setdefault(number, {})
    active = layout.active_build(root)
    if active in held and split in (None, held[active].split):  # the usual case: no manifest read per stage
        return held[active]
    build = active if split is None else shard_build_for(root, split)
    if build not in held:
        log.info("loading shard %s build %s", number, build)
        held[build] = Shard.open(build, config)
        for old in [b for b in held if b != build and not b.exists()]:
            del held[old]
        while len(held) > KEEP_OPEN:  # the longest held goes first
            del held[next(iter(held))]
    return held[build]


def run_shard_stage(number: int, stage: str, folder: str) -> str:
    shard = current_shard(number, requested_split(Path(folder), stage))
    if shard.number != number:
        raise SearchIndexError(f"{shard.index.path} is shard {shard.number}, not {number}")
    return str(shard.run(stage, Path(folder)))


def celery_fan_out(shards: int) -> FanOut:
    """Each stage sent to the ``shards`` shard queues as one group; their answer files, in shard order."""
    from workers.celery import app

    def fan_out(stage: str, folder: Path) -> list[Path]:
        result = group(app.signature(SHARD_STAGE, args=[number, stage, str(folder)], queue=shard_queue(number))
                       for number in range(shards)).apply_async()
        timeout = settings.SHARD_STAGE_TIMEOUT_S
        try:
            answers = result.get(timeout=timeout, interval=0.005, disable_sync_subtasks=False)
        except CeleryTimeout:
            result.revoke()
            queues = ", ".join(shard_queue(n) for n in range(shards))
            raise EngineError(f"not every shard answered '{stage}' within {timeout:.0f} s: "
                              f"is a worker listening on each of {queues}?") from None
        except EngineError:
            raise
        except Exception as exc:  # a shard's own failure, carried back by the result backend
            raise EngineError(f"a shard failed at '{stage}': {type(exc).__name__}: {exc}") from exc
        finally:
            result.forget()
        return [Path(answer) for answer in answers]

    return fan_out
