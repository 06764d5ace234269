from django.contrib import admin

from .models import ApiToken, MaintenanceRun, Rating, SearchJob


@admin.register(SearchJob)
class SearchJobAdmin(admin.ModelAdmin):
    """Searches are made by the site and its workers: staff read them (and may delete them),
    never add or edit one by hand."""
    list_display = ("id", "key", "owner", "method", "k", "status", "stage", "index_build", "created", "finished")
    list_filter = ("status", "method")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Rating)
class RatingAdmin(admin.ModelAdmin):
    list_display = ("job", "image_id", "rank", "rater", "value", "updated")
    list_filter = ("value",)


@admin.register(MaintenanceRun)
class MaintenanceRunAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "status", "step", "done", "total", "started", "finished", "build")
    list_filter = ("kind", "status")
    readonly_fields = ("log",)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Keys are made by create_api_token (the key is shown once); staff may revoke one here."""
    list_display = ("user", "name", "created", "last_used")
    readonly_fields = ("user", "digest", "name", "created", "last_used")

    def has_add_permission(self, request):
        return False
