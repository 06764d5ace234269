from django.contrib import admin

from .models import MaintenanceRun, Rating, SearchJob


@admin.register(SearchJob)
class SearchJobAdmin(admin.ModelAdmin):
    list_display = ("id", "method", "k", "status", "stage", "index_build", "created", "finished")
    list_filter = ("status", "method")
    readonly_fields = ("results", "timings_ms", "celery_task_id")


@admin.register(Rating)
class RatingAdmin(admin.ModelAdmin):
    list_display = ("job", "image_id", "rank", "rater", "value", "updated")
    list_filter = ("value",)


@admin.register(MaintenanceRun)
class MaintenanceRunAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "status", "step", "done", "total", "started", "finished", "build")
    list_filter = ("kind", "status")
    readonly_fields = ("log",)
