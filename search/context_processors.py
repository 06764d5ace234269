"""What every page's navigation needs to know."""
from django.conf import settings


def site(request):
    staff = request.user.is_authenticated and request.user.is_staff
    return {"report_visible": staff or settings.REPORT_ACCESS == "aggregate"}
