"""Searches get an unguessable key for their URLs and an owner (user or session).

The key is added in three steps (nullable, filled row by row, then unique) because a
callable default on a new unique column would give every existing row the same value.
Searches made before this migration have no owner: only staff see them.
"""
import uuid

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def fill_keys(apps, schema_editor):
    SearchJob = apps.get_model("search", "SearchJob")
    for job in SearchJob.objects.filter(key__isnull=True).only("pk"):
        SearchJob.objects.filter(pk=job.pk).update(key=uuid.uuid4())


class Migration(migrations.Migration):

    dependencies = [
        ("search", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(model_name="searchjob", name="key", field=models.UUIDField(null=True, editable=False)),
        migrations.RunPython(fill_keys, migrations.RunPython.noop),
        migrations.AlterField(model_name="searchjob", name="key",
                              field=models.UUIDField(default=uuid.uuid4, unique=True, editable=False)),
        migrations.AddField(
            model_name="searchjob", name="owner",
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL,
                                    related_name="searches", to=settings.AUTH_USER_MODEL)),
        migrations.AddField(model_name="searchjob", name="owner_session",
                            field=models.CharField(blank=True, max_length=40)),
    ]
