from django.contrib import admin
from django.urls import path

from search import views

urlpatterns = [
    path("", views.home, name="home"),
    path("jobs/<int:job_id>/", views.job_page, name="job"),
    path("jobs/<int:job_id>.json", views.job_json, name="job_json"),
    path("jobs/<int:job_id>/query.jpg", views.query_image, name="query_image"),
    path("jobs/<int:job_id>/match/<int:rank>/", views.match_page, name="match"),
    path("jobs/<int:job_id>/match/<int:rank>.png", views.match_png, name="match_png"),
    path("jobs/<int:job_id>/rate", views.rate, name="rate"),
    path("images/<str:image_id>", views.collection_image, name="collection_image"),
    path("thumbs/<str:image_id>.jpg", views.thumbnail, name="thumbnail"),
    path("report/", views.report, name="report"),
    path("api/searches", views.api_create_search, name="api_searches"),
    path("api/searches/<int:job_id>", views.job_json, name="api_search"),
    path("staff/", views.staff_home, name="staff"),
    path("staff/start", views.staff_start, name="staff_start"),
    path("staff/upload", views.staff_upload, name="staff_upload"),
    path("staff/runs/<int:run_id>/", views.staff_run, name="staff_run"),
    path("staff/runs/<int:run_id>.json", views.staff_run_json, name="staff_run_json"),
    path("admin/", admin.site.urls),
]
