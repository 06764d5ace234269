"""The site's rows: a search job per uploaded query, a rating per (job, result, rater),
and a maintenance run per retrain or reindex. The engine itself keeps no database."""
import uuid
from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone


class Status(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class TrackedJob(models.Model):
    """What every asynchronous job row carries: its status, error, Celery task and times."""
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    celery_task_id = models.CharField(max_length=200, blank=True)
    created = models.DateTimeField(default=timezone.now)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    # Which worker process runs it, and when that process last said it was alive (every few
    # seconds while it works): a job whose worker went quiet is taken back (search/watchdog.py).
    worker = models.CharField(max_length=200, blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        abstract = True
        ordering = ["-created"]

    @property
    def is_finished(self) -> bool:
        return self.status in (Status.DONE, Status.FAILED)

    @property
    def elapsed_s(self) -> float | None:
        if not self.started:
            return None
        return ((self.finished or timezone.now()) - self.started).total_seconds()


class SearchJob(TrackedJob):
    # What every URL of a search names: unguessable, unlike the row id, which stays internal.
    key = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # Whose search it is: a logged-in user, or else the browser session (or API cookie jar) that sent it.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="searches")
    owner_session = models.CharField(max_length=40, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)  # for the per-client rate limit
    query_image = models.FileField(upload_to="queries/%Y/%m/%d/")
    method = models.CharField(max_length=40)
    k = models.PositiveIntegerField(default=10)
    stage = models.CharField(max_length=200, blank=True)
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    results = models.JSONField(default=list, blank=True)
    n_candidates = models.PositiveIntegerField(default=0)
    n_verified = models.PositiveIntegerField(default=0)
    timings_ms = models.JSONField(default=dict, blank=True)
    index_build = models.CharField(max_length=200, blank=True)

    class Meta(TrackedJob.Meta):
        pass

    def __str__(self):
        return f"search {self.pk} ({self.method}, {self.status})"

    def visible_to(self, request) -> bool:
        """A search, its query photo and its results are its owner's and staff's alone."""
        user = request.user
        if user.is_authenticated and (user.is_staff or user.pk == self.owner_id):
            return True
        return bool(self.owner_session) and request.session.session_key == self.owner_session

    def queue_place(self, recent: int = 20) -> dict | None:
        """For a queued search: how many searches are ahead of it (queued earlier, or running) and
        a rough wait, from the median time of the last ``recent`` searches done and the search
        workers seen working lately; None once it runs."""
        if self.status != Status.QUEUED:
            return None
        waiting = SearchJob.objects.filter(status=Status.QUEUED, created__lt=self.created).count()
        running = SearchJob.objects.filter(status=Status.RUNNING)
        workers = max(1, len(set(running.values_list("worker", flat=True))))
        ahead = waiting + running.count()
        times = sorted((job.finished - job.started).total_seconds() for job in SearchJob.objects.filter(
            status=Status.DONE, started__isnull=False, finished__isnull=False).order_by("-finished")[:recent])
        each = times[len(times) // 2] if times else None
        return {"ahead": ahead, "estimate_s": None if each is None else round((ahead + 1) * each / workers, 1)}

    def fail_if_stuck(self) -> bool:
        """The watchdog's check, also run when the job is read: see ``search.watchdog.fail_overdue``."""
        if self.is_finished:
            return False
        from .watchdog import fail_overdue

        failed = fail_overdue(SearchJob.objects.filter(pk=self.pk))
        self.refresh_from_db()
        return bool(failed)


class Rating(models.Model):
    RELEVANT = "relevant"
    NOT_RELEVANT = "not_relevant"
    VALUES = [(RELEVANT, "relevant"), (NOT_RELEVANT, "not relevant")]

    job = models.ForeignKey(SearchJob, on_delete=models.CASCADE, related_name="ratings")
    image_id = models.CharField(max_length=40)
    rank = models.PositiveIntegerField(default=0)
    rater = models.CharField(max_length=100, help_text="'user:<id>' or 'session:<key>'")
    value = models.CharField(max_length=20, choices=VALUES)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "image_id", "rater"], name="one_rating_per_rater")]

    def __str__(self):
        return f"{self.rater} rated {self.image_id} {self.value} for job {self.job_id}"


LOG_STAMP = "%H:%M:%S"  # what each line of a maintenance run's log starts with


class MaintenanceRun(TrackedJob):
    REINDEX = "reindex"
    TRAIN = "train"
    ADD = "add"
    EVALUATE = "evaluate"
    KINDS = [(REINDEX, "reindex"), (TRAIN, "retrain classifier + attention, then reindex"),
             (ADD, "add images to the active index"), (EVALUATE, "evaluate the active index on its labels")]

    kind = models.CharField(max_length=10, choices=KINDS)
    step = models.CharField(max_length=200, blank=True)
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    step_started = models.DateTimeField(null=True, blank=True)
    log = models.TextField(blank=True)
    build = models.CharField(max_length=200, blank=True)
    collection_dir = models.CharField(max_length=500, blank=True,
                                      help_text="folder on the server to index; empty: the active index's folder")
    labels = models.CharField(max_length=500, blank=True,
                              help_text="'folders', a path,label CSV on the server, or empty for the defaults")
    label = models.CharField(max_length=60, blank=True, help_text="the class label of the images an 'add' run adds")
    requested_by = models.CharField(max_length=150, blank=True)

    class Meta(TrackedJob.Meta):
        pass

    def __str__(self):
        return f"{self.kind} {self.pk} ({self.status})"

    @staticmethod
    def log_line(text: str) -> str:
        """A line of a run's log: the time (LOG_STAMP, which ``steps`` reads back), then ``text``."""
        return f"{timezone.now().strftime(LOG_STAMP)} {text}\n"

    def steps(self) -> list[dict]:
        """The steps so far in order, each with whether it has finished and, once it has, how
        many seconds it took, read from the log's '<HH:MM:SS> <step>: started (N to do)' and
        '<HH:MM:SS> <step>: finished' lines (a step past midnight wraps round)."""
        steps: dict[str, dict] = {}
        began: dict[str, int] = {}
        for line in self.log.splitlines():
            stamp, _, text = line.partition(" ")
            if ": started (" in text:
                name = text.split(": started (", 1)[0]
                steps[name] = {"name": name, "finished": False, "seconds": None}
                began[name] = _clock_seconds(stamp)
            elif text.endswith(": finished") and text[: -len(": finished")] in steps:
                name = text[: -len(": finished")]
                end, start = _clock_seconds(stamp), began.get(name)
                steps[name].update(finished=True,
                                   seconds=None if end is None or start is None else (end - start) % 86400)
        return list(steps.values())

    def previous_duration_s(self) -> float | None:
        """How long the last completed run of the same kind took, start to end."""
        last = (MaintenanceRun.objects.filter(kind=self.kind, status=Status.DONE, started__isnull=False,
                                              finished__isnull=False).exclude(pk=self.pk).order_by("-finished").first())
        return None if last is None else (last.finished - last.started).total_seconds()

    @property
    def overall_remaining_s(self) -> float | None:
        """The whole run's remaining time, if it takes as long as the last run of its kind did."""
        previous = self.previous_duration_s()
        if self.status != Status.RUNNING or previous is None or self.elapsed_s is None:
            return None
        return max(0.0, previous - self.elapsed_s)

    @property
    def remaining_s(self) -> float | None:
        """Linear estimate for the current step from its own rate."""
        if self.finished or not self.step_started or not self.total or not self.done:
            return None
        spent = (timezone.now() - self.step_started).total_seconds()
        return spent / self.done * (self.total - self.done)


def _clock_seconds(stamp: str) -> int | None:
    """Seconds since midnight of a log line's stamp (LOG_STAMP); None for anything else."""
    try:
        clock = datetime.strptime(stamp, LOG_STAMP)
    except ValueError:
        return None
    return clock.hour * 3600 + clock.minute * 60 + clock.second


class ApiToken(models.Model):
    """A staff member's key for scripts (the collection API): only its SHA-256 is kept, so the
    key itself is shown once, when made (``create_api_token``)."""
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    digest = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=100, blank=True)
    created = models.DateTimeField(default=timezone.now)
    last_used = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"{self.user} {self.name or self.digest[:8]}"

    @staticmethod
    def digest_of(key: str) -> str:
        import hashlib

        return hashlib.sha256(key.encode()).hexdigest()

    @classmethod
    def issue(cls, user, name: str = "") -> str:
        """A new random key for ``user``; returns the key (stored only as its digest)."""
        import secrets

        key = secrets.token_urlsafe(32)
        cls.objects.create(user=user, digest=cls.digest_of(key), name=name)
        return key

    @classmethod
    def user_for(cls, key: str):
        """The active user a key belongs to, or None; notes when it was used."""
        token = cls.objects.select_related("user").filter(digest=cls.digest_of(key)).first()
        if token is None or not token.user.is_active:
            return None
        cls.objects.filter(pk=token.pk).update(last_used=timezone.now())
        return token.user
