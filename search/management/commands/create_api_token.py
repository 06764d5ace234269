from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from ...models import ApiToken


class Command(BaseCommand):
    help = ("Make a key for scripts using the collection API (/api/collection/...) as a staff member; the key "
            "is printed once (only its digest is kept). Revoke it in the admin.")

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="what the key is for")

    def handle(self, *args, username, name, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user {username!r}")
        if not (user.is_active and user.is_staff):
            raise CommandError(f"{username} is not an active staff member: the collection API is staff-only")
        self.stdout.write(ApiToken.issue(user, name))
