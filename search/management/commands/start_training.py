"""Queue the training of the classifier and attention head as a maintenance run (what the staff
page's retrain button does): the site keeps serving the current model and index until the new
ones are complete, then both swap in."""
import time

from django.core.management.base import CommandError

from ...engine.model import load_classifier
from ...engine.workflows import is_starter
from ...maintenance import run_maintenance
from ...models import MaintenanceRun, Status
from ...queue import enqueue_maintenance
from ...watchdog import requeue_orphans
from ..base import EngineCommand


class Command(EngineCommand):
    help = ("Queue a retrain (classifier + attention head, then reindex; the new model and index swap in "
            "together) on the maintenance worker. Only while the classifier is the ImageNet starter, unless "
            "--force; never while another retrain is queued or running. --now runs it in this process; "
            "--follow prints its progress until it ends.")

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="retrain even a fine-tuned classifier")
        parser.add_argument("--now", action="store_true", help="run it here instead of on the maintenance worker")
        parser.add_argument("--follow", action="store_true", help="print the run's progress until it ends")
        parser.add_argument("--every", type=float, default=15.0, help="seconds between progress lines (--follow)")

    def handle(self, *args, force, now, follow, every, **options):
        config = self.config(options)
        requeue_orphans()  # a run whose worker died (the demo stopped mid-training) is failed, not waited for
        pending = MaintenanceRun.objects.filter(kind=MaintenanceRun.TRAIN,
                                                status__in=[Status.QUEUED, Status.RUNNING]).first()
        if pending is not None:
            self.stdout.write(f"training run {pending.pk} is already {pending.status}")
            run = pending
        elif not force and not is_starter(load_classifier(config.default_model_path)):
            self.stdout.write("the classifier is already fine-tuned on this collection (--force to retrain)")
            return
        else:
            run = MaintenanceRun.objects.create(kind=MaintenanceRun.TRAIN, requested_by="start_training")
            if now:
                status = run_maintenance(run.pk)
                run.refresh_from_db()
                if status != Status.DONE:
                    raise CommandError(f"training run {run.pk} {status}: {run.error}")
                self.stdout.write(self.style.SUCCESS(f"training run {run.pk} done: build {run.build} is active"))
                return
            MaintenanceRun.objects.filter(pk=run.pk).update(celery_task_id=enqueue_maintenance(run.pk))
            self.stdout.write(f"training run {run.pk} queued on the maintenance worker; the staff page "
                              f"/staff/runs/{run.pk}/ shows its progress")
        if follow:
            self.follow(run.pk, every)

    def follow(self, run_id: int, every: float) -> None:
        last = None
        while True:
            run = MaintenanceRun.objects.get(pk=run_id)
            line = f"training run {run.pk}: {run.status}" + (f", {run.step} {run.done}/{run.total}" if run.step else "")
            if line != last:
                self.stdout.write(line)
                self.stdout.flush()
                last = line
            if run.status in (Status.DONE, Status.FAILED):
                if run.status == Status.FAILED:
                    raise CommandError(f"training run {run.pk} failed: {run.error}")
                self.stdout.write(self.style.SUCCESS(f"training run {run.pk} done: the fine-tuned model and "
                                                     f"build {run.build} are serving"))
                return
            time.sleep(every)
