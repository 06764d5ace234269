"""Thin views: forms and rows in, rows and templates out; the work is in Celery tasks
(queued by name through ``search/queue.py``; ``search/tasks.py`` -> ``search/jobs.py``,
``search/maintenance.py``) and the engine. This module loads no model code."""
from __future__ import annotations

import json
from functools import wraps
from pathlib import Path

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.db import transaction
from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from . import collection_files
from .archives import ArchiveError
from .conf import engine_config
from .engine import layout
from .engine.classifier_info import describe_classifier, read_classifier_info
from .engine.errors import EngineError, SearchIndexError
from .engine.methods import is_fine, method_label
from .forms import CollectionUploadForm, MaintenanceForm, SearchForm
from .limits import DiskFull, client_ip, is_disk_full, rate_limited
from .middleware import wants_json
from .models import ApiToken, MaintenanceRun, Rating, SearchJob, Status
from .queue import enqueue_maintenance, enqueue_search
from .reports import job_precisions, method_rows


def staff_only(view):
    """Staff pages: others are sent to the site's login page (not the admin's)."""
    return staff_member_required(view, login_url="login")


def may_search(view):
    """Anyone may search and rate unless ANONYMOUS_CAN_SEARCH is off; then a login is needed."""
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not settings.ANONYMOUS_CAN_SEARCH and not request.user.is_authenticated:
            if wants_json(request):
                return JsonResponse({"error": "log in to search"}, status=403)
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)
    return wrapper


def index_status() -> str:
    try:
        catalog = collection_files.active_catalog()
        return f"Find the images that show the same thing among {len(catalog)} images."
    except (SearchIndexError, OSError) as exc:
        return str(exc)


def training_run() -> MaintenanceRun | None:
    """The retrain queued or under way, if any (the home page says so)."""
    return (MaintenanceRun.objects.filter(kind=MaintenanceRun.TRAIN, status__in=[Status.QUEUED, Status.RUNNING])
            .order_by("-pk").first())


def classifier_info() -> dict:
    """The classifier's JSON beside it (this process loads no model); empty when there is none."""
    return read_classifier_info(engine_config().default_model_path)


def classifier_is_starter() -> bool:
    """Whether the site serves the ImageNet starter (prepare_collection --site-first)."""
    return bool(classifier_info().get("starter"))


DISK_FULL = "The server's disk is full: the search was not saved. Please tell the site's administrator."


def start_search(request, form: SearchForm) -> SearchJob:
    """The job row, owned by the user or else by the session (made now if the visitor has none).
    Raises ``DiskFull`` when the photo cannot be stored."""
    owner = request.user if request.user.is_authenticated else None
    if owner is None and not request.session.session_key:
        request.session.save()
    try:
        with transaction.atomic():  # the photo is stored while the row is saved: neither without the other
            job = SearchJob.objects.create(
                query_image=form.cleaned_data["image"], method=form.cleaned_data["method"], k=form.cleaned_data["k"],
                owner=owner, client_ip=client_ip(request), owner_session="" if owner else request.session.session_key)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(str(exc)) from exc
        raise
    SearchJob.objects.filter(pk=job.pk).update(celery_task_id=enqueue_search(job.pk))
    return job


@may_search
def home(request):
    form = SearchForm(request.POST or None, request.FILES or None)
    status = 200
    if request.method == "POST":
        status = 400
        refused = rate_limited(request)
        if refused:
            form.add_error(None, refused)
            status = 429
        elif form.is_valid():
            try:
                job = start_search(request, form)
            except DiskFull:
                form.add_error(None, DISK_FULL)
                status = 507
            else:
                return redirect("job", key=job.key)
    response = render(request, "home.html", {"form": form, "status": index_status(), "training": training_run(),
                                             "starter": classifier_is_starter()}, status=status)
    if status == 429:
        response["Retry-After"] = "60"
    return response


def shown_path(relpath: str) -> str:
    """An image's path as visitors see it: relative to the collection folder, or the file name
    alone for an image added from elsewhere (its absolute path is the server's business)."""
    return Path(relpath).name if Path(relpath).is_absolute() else relpath


def job_payload(request, job: SearchJob) -> dict:
    job.fail_if_stuck()
    rater = rater_key(request, create=False)
    mine = dict(job.ratings.filter(rater=rater).values_list("image_id", "value")) if rater else {}
    results = []
    for r in job.results:
        results.append({
            "rank": r["rank"], "image_id": r["image_id"], "relpath": shown_path(r["relpath"]), "label": r["label"],
            "distance": r["distance"], "stage": r["stage"], "inliers": r["inliers"],
            "confidence": r.get("confidence", 0.0),
            "thumbnail_url": reverse("thumbnail", args=[r["image_id"]]),
            "image_url": reverse("collection_image", args=[r["image_id"]]),
            "page_url": reverse("image_page", args=[r["image_id"]]),
            "match_url": reverse("match", args=[job.key, r["rank"]]),
            "rating": mine.get(r["image_id"]),
        })
    return {
        "id": str(job.key), "url": request.build_absolute_uri(reverse("job", args=[job.key])),
        "status": job.status, "stage": job.stage, "progress": {"done": job.progress_done, "total": job.progress_total},
        "error": job.error or None, "method": job.method, "k": job.k, "index_build": job.index_build or None,
        "n_candidates": job.n_candidates, "n_verified": job.n_verified, "timings_ms": job.timings_ms,
        # fine methods: whether any result is a confident (verified) match; None for coarse-only methods
        "confident_match": (job.n_verified > 0 if is_fine(job.method) else None) if job.status == Status.DONE else None,
        "created": job.created.isoformat(), "finished": job.finished.isoformat() if job.finished else None,
        "query_url": reverse("query_image", args=[job.key]),
        "queue": job.queue_place(),  # while queued: searches ahead and a rough wait in seconds
        "results": results,
    }


def own_job(request, key) -> SearchJob:
    """The search named by ``key`` when the visitor may see it; otherwise a 404, the same answer
    as for a key that does not exist (nothing tells whether someone else's search does)."""
    job = SearchJob.objects.filter(key=key).first()
    if job is None or not job.visible_to(request):
        raise Http404("no such search")
    return job


@may_search
def job_page(request, key):
    job = own_job(request, key)
    job.fail_if_stuck()
    return render(request, "job.html", {"job": job, "ratings": Rating.VALUES,
                                        "method_title": method_label(job.method, settings.RETRIEVAL.pca_dim)})


@may_search
def job_json(request, key):
    """What the job page polls, and the API's GET of a search."""
    return JsonResponse(job_payload(request, own_job(request, key)))


@may_search
def query_image(request, key):
    job = own_job(request, key)
    if not job.query_image:
        raise Http404("the query image was deleted after the retention period")
    try:
        return FileResponse(job.query_image.open("rb"), content_type="image/jpeg")
    except FileNotFoundError:
        raise Http404("the query image was deleted")


@may_search
def collection_image(request, image_id):
    """An image of the active index, by id only (never by path): the file itself, or a large JPEG
    of it where browsers cannot show the file (HEIC, TIFF)."""
    try:
        path = collection_files.indexed_image_path(image_id)
        if path is not None and path.is_file() and not collection_files.browsers_show(path):
            path = collection_files.thumbnail(image_id, settings.SHOWN_IMAGE_MAX_SIDE)
    except (SearchIndexError, EngineError):
        raise Http404(f"no readable image {image_id} in the active index")
    if path is None or not path.is_file():
        raise Http404(f"no image {image_id} in the active index")
    return FileResponse(path.open("rb"))


@may_search
def thumbnail(request, image_id):
    try:
        path = collection_files.thumbnail(image_id)
    except (SearchIndexError, EngineError):
        raise Http404(f"no readable image {image_id} in the active index")
    if path is None:
        raise Http404(f"no image {image_id} in the active index")
    response = FileResponse(path.open("rb"), content_type="image/jpeg")
    response["Cache-Control"] = "max-age=3600"
    return response


@may_search
def image_page(request, image_id):
    """One image of the collection: the picture, its label and size, more with the same label,
    and a button to search with it; staff also see where it is on disk."""
    try:
        facts = collection_files.image_facts(image_id)
    except SearchIndexError:
        raise Http404("no active index")
    if facts is None:
        raise Http404(f"no image {image_id} in the active index")
    same_label = []
    if facts["label"]:
        same_label = [row["id"] for row in collection_files.browse(collection_files.active_catalog(), facts["label"])
                      if row["id"] != image_id][:12]
    return render(request, "image.html", {"image": facts, "same_label": same_label,
                                          "staff": request.user.is_authenticated and request.user.is_staff})


@require_POST
@may_search
def image_search(request, image_id):
    """Search with an image of the collection, as if it had been uploaded."""
    refused = rate_limited(request)
    if refused:
        return render(request, "refused.html", {"title": "Search not started", "message": refused}, status=429)
    try:
        upload = collection_files.as_query(image_id)
    except (SearchIndexError, EngineError):
        upload = None
    if upload is None:
        raise Http404(f"no readable image {image_id} in the active index")
    form = SearchForm(request.POST, {"image": upload})
    if not form.is_valid():
        return render(request, "refused.html", {"title": "Search not started", "message": "; ".join(e for v in form.errors.values() for e in v)},
                      status=400)
    try:
        job = start_search(request, form)
    except DiskFull:
        return render(request, "refused.html", {"title": "Search not started", "message": DISK_FULL}, status=507)
    return redirect("job", key=job.key)


@may_search
def browse(request):
    """The collection, a page of thumbnails at a time, by label and by words in the file name."""
    try:
        catalog = collection_files.active_catalog()
    except SearchIndexError as exc:
        return render(request, "browse.html", {"error": str(exc)})
    label = request.GET.get("label") or None
    text = request.GET.get("q", "").strip()[:100]
    rows = collection_files.browse(catalog, label, text)
    page = Paginator(rows, settings.BROWSE_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "browse.html", {
        "page": page, "labels": catalog.labels, "label": label, "q": text, "count": len(rows),
        "names": [(row["id"], Path(row["path"]).name, row["label"]) for row in page.object_list]})


@may_search
def my_searches(request):
    """The visitor's own recent searches: by account, or else by this browser's session."""
    if request.user.is_authenticated:
        jobs = SearchJob.objects.filter(owner=request.user)
    elif request.session.session_key:
        jobs = SearchJob.objects.filter(owner=None, owner_session=request.session.session_key)
    else:
        jobs = SearchJob.objects.none()
    jobs = list(jobs.order_by("-created")[:settings.MY_SEARCHES_SHOWN])
    pca_dim = settings.RETRIEVAL.pca_dim
    return render(request, "searches.html", {"jobs": [(job, method_label(job.method, pca_dim)) for job in jobs]})


def _result(job: SearchJob, rank: int) -> dict:
    for r in job.results:
        if r["rank"] == rank:
            return r
    raise Http404(f"the search has no result at rank {rank}")


@may_search
def match_page(request, key, rank):
    job = own_job(request, key)
    return render(request, "match.html", {"job": job, "result": _result(job, rank)})


@may_search
def match_png(request, key, rank):
    job = own_job(request, key)
    try:
        png = collection_files.correspondence_png(job, _result(job, rank))
    except (EngineError, FileNotFoundError) as exc:
        raise Http404(str(exc))
    return HttpResponse(png, content_type="image/png")


def rater_key(request, create=True) -> str | None:
    if request.user.is_authenticated:
        return f"user:{request.user.pk}"
    if not request.session.session_key:
        if not create:
            return None
        request.session.save()
    return f"session:{request.session.session_key}"


@require_POST
@may_search
def rate(request, key):
    job = own_job(request, key)
    try:
        data = json.loads(request.body) if request.content_type == "application/json" else request.POST
        image_id, value = data["image_id"], data["value"]
    except (ValueError, KeyError):
        return JsonResponse({"error": "send image_id and value"}, status=400)
    if value not in dict(Rating.VALUES):
        return JsonResponse({"error": f"value must be one of {', '.join(dict(Rating.VALUES))}"}, status=400)
    ranks = {r["image_id"]: r["rank"] for r in job.results}
    if image_id not in ranks:
        return JsonResponse({"error": f"{image_id} is not a result of this search"}, status=400)
    rating, _ = Rating.objects.update_or_create(job=job, image_id=image_id, rater=rater_key(request),
                                                defaults={"value": value, "rank": ranks[image_id]})
    return JsonResponse({"job": str(job.key), "image_id": image_id, "value": rating.value})


@may_search
def report(request):
    """Staff see every rated search; others see the per-method figures only, and only when
    REPORT_ACCESS is 'aggregate' (a search's query photo and results are its owner's)."""
    staff = request.user.is_authenticated and request.user.is_staff
    if not staff and settings.REPORT_ACCESS != "aggregate":
        return redirect_to_login(request.get_full_path())
    rows = job_precisions()
    methods, label_only = method_rows(rows, engine_config().reports_dir)
    return render(request, "report.html", {"jobs": rows if staff else None, "methods": methods,
                                           "label_only": label_only})


# ---- JSON API --------------------------------------------------------------------------------

@csrf_exempt  # a script API without cookies; the browser form keeps its CSRF token
@require_POST
@may_search
def api_create_search(request):
    refused = rate_limited(request)
    if refused:
        response = JsonResponse({"errors": {"__all__": [refused]}}, status=429)
        response["Retry-After"] = "60"
        return response
    form = SearchForm(request.POST, request.FILES)
    if not form.is_valid():
        return JsonResponse({"errors": {k: [str(e) for e in v] for k, v in form.errors.items()}}, status=400)
    try:
        job = start_search(request, form)
    except DiskFull:
        return JsonResponse({"errors": {"__all__": [DISK_FULL]}}, status=507)
    return JsonResponse({"id": str(job.key), "status": job.status,
                         "url": request.build_absolute_uri(reverse("api_search", args=[job.key])),
                         "page": request.build_absolute_uri(reverse("job", args=[job.key]))}, status=201)


# ---- staff pages -----------------------------------------------------------------------------

@staff_only
def staff_home(request, form=None, upload_form=None, message=""):
    try:
        catalog = collection_files.active_catalog()
        collection = {"build": catalog.build.name, "root": catalog.collection_root, "size": len(catalog),
                      "labels": catalog.labels, "sample": collection_files.searchable_sample(catalog, 24),
                      "removed": collection_files.removed_images(catalog),
                      "behind": layout.settings_behind(layout.read_manifest(catalog.build), engine_config())}
    except SearchIndexError as exc:
        collection = {"error": str(exc)}
    config = engine_config()
    shards = layout.shard_summary(config.shards_root, config.shards, config.index_root) if config.shards >= 2 else []
    return render(request, "staff.html", {
        "collection": collection, "classifier": describe_classifier(classifier_info()),
        "shards": shards, "stale_shards": any(not s["current"] for s in shards),
        "runs": MaintenanceRun.objects.all()[:30], "form": form or MaintenanceForm(),
        "uploads_allowed": settings.COLLECTION_UPLOADS, "upload_form": upload_form or CollectionUploadForm(),
        "message": message}, status=400 if (form or upload_form) else 200)


@require_POST
@staff_only
def staff_upload(request):
    if not settings.COLLECTION_UPLOADS:
        return HttpResponse("adding images from the site is off (COLLECTION_UPLOADS)", status=403)
    form = CollectionUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return staff_home(request, upload_form=form)
    try:
        run = queue_additions(request, form)
    except ArchiveError as exc:
        form.add_error("images", str(exc))
        return staff_home(request, upload_form=form)
    except OSError as exc:
        return staff_home(request, message=f"images not saved: {exc}")
    return redirect("staff_run", run_id=run.pk)


def queue_additions(request, form: CollectionUploadForm) -> MaintenanceRun:
    """Stage a valid upload form's images and queue the 'add' run that takes them in."""
    folder, notes = collection_files.stage_uploads(form.cleaned_data["images"])
    run = MaintenanceRun.objects.create(kind=MaintenanceRun.ADD, collection_dir=str(folder),
                                        label=form.cleaned_data["label"], requested_by=request.user.get_username(),
                                        log="".join(MaintenanceRun.log_line(note) for note in notes))
    MaintenanceRun.objects.filter(pk=run.pk).update(celery_task_id=enqueue_maintenance(run.pk))
    return run


@require_POST
@staff_only
def staff_remove(request):
    """Take images out of search (ids or paths, one per line), or put removed ones back."""
    refs = [line.strip() for line in request.POST.get("images", "").splitlines() if line.strip()]
    if not refs:
        return staff_home(request, message="name the images to remove: ids or paths, one per line")
    try:
        if request.POST.get("action") == "restore":
            count = collection_files.restore_to_search(refs)
            return staff_home(request, message=f"{count} image(s) back in search")
        count = collection_files.remove_from_search(refs)
    except (SearchIndexError, OSError) as exc:
        return staff_home(request, message=f"nothing removed: {exc}")
    return staff_home(request, message=f"{count} image(s) removed from search: searches leave them out from "
                                       "now on, their image addresses give 404, later builds skip them")


@require_POST
@staff_only
def staff_start(request):
    form = MaintenanceForm(request.POST)
    if not form.is_valid():
        return staff_home(request, form)
    busy = MaintenanceRun.objects.filter(status__in=[Status.QUEUED, Status.RUNNING]).first()
    if busy is not None:
        return redirect("staff_run", run_id=busy.pk)
    run = MaintenanceRun.objects.create(requested_by=request.user.get_username(), **form.cleaned_data)
    MaintenanceRun.objects.filter(pk=run.pk).update(celery_task_id=enqueue_maintenance(run.pk))
    return redirect("staff_run", run_id=run.pk)


def run_payload(run: MaintenanceRun) -> dict:
    return {"id": run.pk, "kind": run.kind, "status": run.status, "step": run.step, "done": run.done,
            "total": run.total, "elapsed_s": run.elapsed_s, "remaining_s": run.remaining_s,
            "steps": run.steps(), "overall_remaining_s": run.overall_remaining_s,
            "previous_s": run.previous_duration_s(),
            # what was not done again: features reused from the last build or an interrupted run
            "reused": [line.partition(" ")[2] for line in run.log.splitlines() if "reused" in line],
            "error": run.error or None, "build": run.build or None, "log": run.log}


@staff_only
def staff_run(request, run_id):
    return render(request, "run.html", {"run": get_object_or_404(MaintenanceRun, pk=run_id)})


@staff_only
def staff_run_json(request, run_id):
    return JsonResponse(run_payload(get_object_or_404(MaintenanceRun, pk=run_id)))


# ---- the collection API for staff scripts (token-authenticated) -------------------------------

def staff_token_required(view):
    """A staff member's key (``create_api_token``) in ``Authorization: Token <key>``; errors as
    JSON. No cookies, so no CSRF token either."""
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        user = ApiToken.user_for(key.strip()) if scheme.lower() in ("token", "bearer") and key.strip() else None
        if user is None:
            response = JsonResponse({"error": "send a staff API key: 'Authorization: Token <key>' "
                                              "(python manage.py create_api_token USER)"}, status=401)
            response["WWW-Authenticate"] = "Token"
            return response
        if not user.is_staff:
            return JsonResponse({"error": "the collection API is for staff"}, status=403)
        request.user = user
        return view(request, *args, **kwargs)
    return csrf_exempt(wrapper)


@require_POST
@staff_token_required
def api_add_images(request):
    """Images (multipart field ``images``, one or more; optional ``label``) added to the collection
    by an 'add' run; answers 202 with the run to poll."""
    form = CollectionUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return JsonResponse({"errors": {k: [str(e) for e in v] for k, v in form.errors.items()}}, status=400)
    try:
        run = queue_additions(request, form)
    except ArchiveError as exc:
        return JsonResponse({"errors": {"images": [str(exc)]}}, status=400)
    except OSError as exc:
        status = 507 if is_disk_full(exc) else 500
        return JsonResponse({"error": f"images not saved: {exc}"}, status=status)
    return JsonResponse(dict(run_payload(run), url=request.build_absolute_uri(
        reverse("api_collection_run", args=[run.pk]))), status=202)


@require_POST
@staff_token_required
def api_remove_images(request):
    """JSON ``{"images": [ids or paths], "restore": false}``: out of search at once (or back)."""
    try:
        data = json.loads(request.body)
        refs, restore = list(data["images"]), bool(data.get("restore", False))
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": 'send JSON: {"images": ["id or path", ...], "restore": false}'}, status=400)
    if not refs or not all(isinstance(ref, str) for ref in refs):
        return JsonResponse({"error": "images: a non-empty list of image ids or paths"}, status=400)
    try:
        if restore:
            return JsonResponse({"restored": collection_files.restore_to_search(refs)})
        return JsonResponse({"removed": collection_files.remove_from_search(refs)})
    except SearchIndexError as exc:
        return JsonResponse({"error": str(exc)}, status=400)


@staff_token_required
def api_collection_run(request, run_id):
    return JsonResponse(run_payload(get_object_or_404(MaintenanceRun, pk=run_id)))
