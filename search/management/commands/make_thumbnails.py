from django.core.management.base import BaseCommand

from ...collection_files import make_thumbnails


class Command(BaseCommand):
    help = ("Make the thumbnails the active index's images lack (the site's maintenance runs do this after "
            "each build; demo.sh before serving), so no gallery shows a blank while one is made.")

    def handle(self, *args, **options):
        made, unreadable = make_thumbnails()
        for image_id, reason in unreadable:
            self.stderr.write(f"{image_id}: {reason}")
        self.stdout.write(self.style.SUCCESS(f"{made} thumbnail(s) made"))
