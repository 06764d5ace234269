"""What every page's navigation needs to know."""
from django.conf import settings


def site(request):
    user = getattr(request, "user", None)  # absent on pages answered before the auth middleware
    staff = user is not None and user.is_authenticated and user.is_staff
    return {"report_visible": staff or settings.REPORT_ACCESS == "aggregate"}
