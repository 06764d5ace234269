from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from search import views

urlpatterns = [
    path("", views.home, name="home"),
    path("jobs/<uuid:key>/", views.job_page, name="job"),
    path("jobs/<uuid:key>.json", views.job_json, name="job_json"),
    path("jobs/<uuid:key>/query.jpg", views.query_image, name="query_image"),
    path("jobs/<uuid:key>/match/<int:rank>/", views.match_page, name="match"),
    path("jobs/<uuid:key>/match/<int:rank>.png", views.match_png, name="match_png"),
    path("jobs/<uuid:key>/rate", views.rate, name="rate"),
    path("images/<str:image_id>", views.collection_image, name="collection_image"),
    path("images/<str:image_id>/", views.image_page, name="image_page"),
    path("images/<str:image_id>/search", views.image_search, name="image_search"),
    path("collection/", views.browse, name="browse"),
    path("searches/", views.my_searches, name="my_searches"),
    path("thumbs/<str:image_id>.jpg", views.thumbnail, name="thumbnail"),
    path("report/", views.report, name="report"),
    path("api/searches", views.api_create_search, name="api_searches"),
    path("api/searches/<uuid:key>", views.job_json, name="api_search"),
    path("api/collection/images", views.api_add_images, name="api_add_images"),
    path("api/collection/remove", views.api_remove_images, name="api_remove_images"),
    path("api/collection/runs/<int:run_id>", views.api_collection_run, name="api_collection_run"),
    path("staff/", views.staff_home, name="staff"),
    path("staff/start", views.staff_start, name="staff_start"),
    path("staff/upload", views.staff_upload, name="staff_upload"),
    path("staff/remove", views.staff_remove, name="staff_remove"),
    path("staff/runs/<int:run_id>/", views.staff_run, name="staff_run"),
    path("staff/runs/<int:run_id>.json", views.staff_run_json, name="staff_run_json"),
    path("login/", auth_views.LoginView.as_view(template_name="login.html", redirect_authenticated_user=True),
         name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
