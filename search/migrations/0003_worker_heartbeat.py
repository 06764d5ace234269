from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("search", "0002_searchjob_key_owner"),
    ]

    operations = [
        migrations.AddField(model_name=model, name=name, field=field)
        for model in ("searchjob", "maintenancerun")
        for name, field in (
            ("worker", models.CharField(blank=True, max_length=200)),
            ("heartbeat", models.DateTimeField(blank=True, null=True)),
            ("attempts", models.PositiveSmallIntegerField(default=0)),
        )
    ] + [
        migrations.AddField(model_name="searchjob", name="client_ip",
                            field=models.GenericIPAddressField(blank=True, null=True)),
    ]
