"""The upload form refuses bad input with a clear message on the form (never a 500),
before anything is queued."""
import io
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from search.models import SearchJob
from tests.conftest import corel_image
from tests.test_images_and_collection import jpeg_with_malformed_exif, png_header_only

pytestmark = pytest.mark.django_db


def post(client, **files_and_fields):
    data = {"method": "penultimate+attention", "k": "10"}
    data.update(files_and_fields)
    return client.post("/", data)


def upload(name, content, content_type="application/octet-stream"):
    return SimpleUploadedFile(name, content, content_type=content_type)


def assert_refused(response, message):
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not SearchJob.objects.exists()


def test_home_page_has_the_form_with_csrf_and_every_method(client):
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "csrfmiddlewaretoken" in html and 'id="drop-zone"' in html
    for method in ("logits", "pca", "penultimate", "instance", "hybrid", "logits+attention", "pca+attention",
                   "penultimate+attention", "instance+attention", "hybrid+attention"):
        assert f'value="{method}"' in html
    assert 'value="hybrid+attention" selected' in html


def test_non_image_is_refused(client):
    response = post(client, image=upload("notes.jpg", b"this is plain text, not a JPEG\n" * 20))
    assert_refused(response, "not an image file (its content is not a known image format)")


def test_truncated_jpeg_is_refused(client):
    data = corel_image(1).read_bytes()
    response = post(client, image=upload("cut.jpg", data[: len(data) // 3], "image/jpeg"))
    assert_refused(response, "image is truncated or corrupt")


def test_oversize_file_is_refused_before_decoding(client, settings):
    settings.UPLOAD_MAX_BYTES = 50_000
    response = post(client, image=upload("big.jpg", b"\xff" * 60_000, "image/jpeg"))  # not even an image
    assert_refused(response, "The file is 0.06 MB; the limit is 0.05 MB.")
    assert "cannot be used as an image" not in response.content.decode()


def test_decompression_bomb_is_refused(client):
    response = post(client, image=upload("bomb.png", png_header_only(20_000, 20_000), "image/png"))
    assert response.status_code == 400 and not SearchJob.objects.exists()
    html = response.content.decode()
    assert "cannot be used as an image" in html
    assert "possible decompression bomb" in html or "20000x20000 pixels is over the limit" in html


def test_wrong_form_field_is_refused(client):
    response = client.post("/", {"file": upload("a.jpg", corel_image(1).read_bytes()), "method": "pca", "k": "5"})
    assert_refused(response, "Choose an image file to search with (form field &#x27;image&#x27;), or give an image&#x27;s address")


def test_unknown_method_is_refused(client):
    response = post(client, image=upload("a.jpg", corel_image(1).read_bytes()), method="sift")
    assert_refused(response, "Select a valid choice")


def test_form_posts_need_the_csrf_token():
    from django.test import Client

    response = Client(enforce_csrf_checks=True).post("/", {"method": "pca", "k": "5"})
    assert response.status_code == 403


def test_exif_orientation_is_applied_and_the_image_saved_normalised(client, monkeypatch):
    from search import views

    monkeypatch.setattr(views, "enqueue_search", lambda job_id: "not-queued")  # no worker needed
    image = Image.new("RGB", (60, 20), "red")
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90° clockwise: displayed portrait
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    response = post(client, image=upload("landscape.png", buffer.getvalue()))
    assert response.status_code == 302
    job = SearchJob.objects.get()
    with Image.open(job.query_image.path) as saved:
        assert saved.format == "JPEG" and saved.size == (20, 60)
        assert 0x0112 not in saved.getexif()


def test_a_photo_with_malformed_exif_is_searched_not_a_500(client, monkeypatch):
    from search import views

    monkeypatch.setattr(views, "enqueue_search", lambda job_id: "not-queued")  # no worker needed
    response = post(client, image=upload("fuzzed.jpg", jpeg_with_malformed_exif(), "image/jpeg"))
    assert response.status_code == 302
    with Image.open(SearchJob.objects.get().query_image.path) as saved:
        assert saved.format == "JPEG" and saved.size == (60, 20)


def declare_and_send(url: str, path: str, declared: int, sent: bytes, headers: str = "") -> bytes:
    """Raw HTTP: a POST declaring ``declared`` body bytes of which only ``sent`` are sent; returns
    the server's answer (headers and body)."""
    import re
    import socket
    from urllib.parse import urlparse

    address = urlparse(url)
    with socket.create_connection((address.hostname, address.port), timeout=60) as connection:
        connection.sendall((f"POST {path} HTTP/1.1\r\nHost: {address.hostname}\r\n"
                            f"Content-Type: multipart/form-data; boundary=xyz\r\n{headers}"
                            f"Content-Length: {declared}\r\n\r\n").encode() + sent)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := connection.recv(65536)):
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        # as far as the Content-Length says, or without one until the server closes
        while (not length or len(body) < int(length.group(1))) and (chunk := connection.recv(65536)):
            body += chunk
    return head + b"\r\n\r\n" + body


@pytest.mark.django_db(transaction=True)
def test_an_oversized_body_is_refused_before_it_is_sent(live_server, tmp_path, settings):
    """512 MiB declared, 1 KiB sent: the answer (413, the limit in words) comes at once, so
    nothing waited for the body, let alone wrote it to a temporary file; the API answers JSON."""
    spool = tmp_path / "spool"
    spool.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(spool)
    form = declare_and_send(live_server.url, "/", 512 * 2**20, b"x" * 1024)
    assert form.startswith(b"HTTP/1.1 413"), form[:200]
    assert b"The upload is 512.0 MB; the limit is 21.0 MB." in form and b'id="refused"' in form
    api = declare_and_send(live_server.url, "/api/searches", 512 * 2**20, b"x" * 1024)
    assert api.startswith(b"HTTP/1.1 413") and b'"errors": {"image": ["The upload is 512.0 MB' in api
    assert not list(spool.iterdir()) and not SearchJob.objects.exists()
    # a body within the limit is read as usual (the form then names what is missing)
    small = declare_and_send(live_server.url, "/api/searches", 9, b"--xyz--\r\n")
    assert small.startswith(b"HTTP/1.1 400") and b"Choose an image file" in small


def test_searches_per_minute_are_limited_per_client(client, admin_client, settings, monkeypatch):
    """The form and the API answer 429 with a reason once a client has started its share; counted
    by address, so a script without cookies is counted too; staff are not limited."""
    from django.test import Client

    from search import views

    monkeypatch.setattr(views, "enqueue_search", lambda job_id: "not-queued")  # no worker needed
    settings.SEARCHES_PER_MINUTE = 2
    photo = corel_image(1).read_bytes()
    assert post(client, image=upload("a.jpg", photo)).status_code == 302
    cookieless = Client()  # another session, the same address
    assert cookieless.post("/api/searches", {"image": upload("b.jpg", photo)}).status_code == 201
    refused = post(client, image=upload("c.jpg", photo))
    assert refused.status_code == 429 and refused["Retry-After"] == "60"
    assert "Too many searches: at most 2 a minute" in refused.content.decode()
    api = Client().post("/api/searches", {"image": upload("d.jpg", photo)})
    assert api.status_code == 429 and "Too many searches" in api.json()["errors"]["__all__"][0]
    elsewhere = Client(REMOTE_ADDR="10.1.2.3")
    assert elsewhere.post("/api/searches", {"image": upload("e.jpg", photo)}).status_code == 201
    assert admin_client.post("/api/searches", {"image": upload("f.jpg", photo)}).status_code == 201
    assert SearchJob.objects.count() == 4


def test_a_full_disk_is_a_clear_error_and_no_half_saved_search(client, monkeypatch):
    import errno

    from django.core.files.storage import FileSystemStorage

    from search import views

    monkeypatch.setattr(views, "enqueue_search", lambda job_id: pytest.fail("nothing to queue"))

    def no_space(self, name, content):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FileSystemStorage, "_save", no_space)
    response = post(client, image=upload("a.jpg", corel_image(1).read_bytes()))
    assert response.status_code == 507 and "disk is full" in response.content.decode()
    api = client.post("/api/searches", {"image": upload("a.jpg", corel_image(1).read_bytes())})
    assert api.status_code == 507 and "disk is full" in api.json()["errors"]["__all__"][0]
    assert not SearchJob.objects.exists()


def test_searches_past_their_retention_lose_their_photo_and_unrated_ones_their_row(settings):
    from datetime import timedelta

    from django.utils import timezone

    from search.models import Rating, Status
    from search.watchdog import expire_old_searches

    settings.SEARCH_RETENTION_DAYS = 30
    old = timezone.now() - timedelta(days=31)

    def search(created, status=Status.DONE):
        return SearchJob.objects.create(query_image=upload("q.jpg", corel_image(1).read_bytes()), method="pca",
                                        k=3, created=created, status=status)

    unrated, rated, recent, running = search(old), search(old), search(timezone.now()), search(old, Status.RUNNING)
    Rating.objects.create(job=rated, image_id="abc", rank=1, rater="session:x", value=Rating.RELEVANT)
    photos = {job.pk: Path(job.query_image.path) for job in (unrated, rated, recent, running)}
    assert expire_old_searches() == {"expired": 1, "photos_deleted": 2}
    assert not SearchJob.objects.filter(pk=unrated.pk).exists() and not photos[unrated.pk].exists()
    rated.refresh_from_db()
    assert not rated.query_image and not photos[rated.pk].exists() and rated.ratings.count() == 1
    assert photos[recent.pk].exists() and photos[running.pk].exists()  # too young, or not finished
    settings.SEARCH_RETENTION_DAYS = 0
    assert expire_old_searches() == {"expired": 0, "photos_deleted": 0}


def test_a_search_by_image_address_fetches_it_carefully(client, settings, image_server):
    from search.forms import SearchForm

    def form(url):
        return SearchForm({"url": url, "method": "pca", "k": "5"}, {})

    # the server refuses private addresses unless a test allows loopback
    refused = form(f"{image_server}/photo.jpg")
    assert not refused.is_valid() and "private network" in refused.errors["url"][0]
    settings.URL_FETCH_ALLOW_PRIVATE = True
    fetched = form(f"{image_server}/photo.jpg")
    assert fetched.is_valid(), fetched.errors
    image = fetched.cleaned_data["image"]
    assert image.name == "photo.jpg" and Image.open(image).size == Image.open(corel_image(450)).size
    assert form(f"{image_server}/redirect").is_valid()
    for path, message in (("/notes.txt", "What is at that address cannot be used as an image"),
                          ("/gone.jpg", "answered 404"), ("/loop", "redirects too many times"),
                          ("/to-file", "not a web address")):
        bad = form(image_server + path)
        assert not bad.is_valid() and message in bad.errors["url"][0], (path, bad.errors)
    settings.UPLOAD_MAX_BYTES = 1000
    assert "limit" in form(f"{image_server}/photo.jpg").errors["url"][0]
    settings.UPLOAD_MAX_BYTES = 20 * 1024 * 1024
    assert "http:// or https://" in form("ftp://example.org/a.jpg").errors["url"][0]

    # through the page: the fetched picture becomes the visitor's search
    response = client.post("/", {"url": f"{image_server}/photo.jpg", "method": "pca", "k": "5"})
    assert response.status_code == 302
    job = SearchJob.objects.get()
    assert response["Location"] == f"/jobs/{job.key}/" and job.query_image.name.endswith(".jpg")
    neither = client.post("/", {"method": "pca"})
    assert neither.status_code == 400 and "or give an image&#x27;s address" in neither.content.decode()


def bad_input_corpus() -> list[tuple[str, bytes, bool]]:
    """(file name, content, whether it is a usable picture): odd but valid pictures, which are
    searched, and files that are not, or not whole, pictures, which are refused."""
    import gzip
    import zipfile

    def save(image, fmt, **options):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        return buffer.getvalue()

    photo = Image.open(corel_image(450)).convert("RGB")
    jpeg = corel_image(450).read_bytes()
    png = save(photo, "PNG")
    frames = [photo.resize((64, 48)), photo.resize((64, 48)).rotate(90)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:])
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("photo.jpg", jpeg)
    corpus = [
        ("one-pixel.png", save(Image.new("RGB", (1, 1), "white"), "PNG"), True),
        ("cmyk.jpg", save(photo.convert("CMYK"), "JPEG"), True),
        ("grey.png", save(photo.convert("L"), "PNG"), True),
        ("sixteen-bit.png", save(photo.convert("I;16"), "PNG"), True),
        ("alpha.png", save(photo.convert("RGBA"), "PNG"), True),
        ("palette.gif", save(photo.convert("P"), "GIF"), True),
        ("animated.gif", animated.getvalue(), True),
        ("photo.webp", save(photo, "WEBP"), True),
        ("photo.bmp", save(photo, "BMP"), True),
        ("photo.tiff", save(photo, "TIFF"), True),
        ("photo.heic", save(photo, "HEIF"), True),  # an iPhone's own format
        ("photo.avif", save(photo, "AVIF"), True),
        ("icon.ico", save(photo.resize((64, 64)), "ICO"), True),
        ("progressive.jpg", save(photo, "JPEG", progressive=True), True),
        ("png-named.jpg", png, True),
        ("no-extension", jpeg, True),
        ("strip.png", save(Image.new("RGB", (4000, 3), "blue"), "PNG"), True),
        ("fuzzed-exif.jpg", jpeg_with_malformed_exif(), True),
        ("empty.jpg", b"", False),
        ("notes.jpg", b"just some text, not a picture\n" * 20, False),
        ("page.png", b"<!doctype html><html><body>hello</body></html>", False),
        ("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', False),
        ("document.jpg", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", False),
        ("half.jpg", jpeg[: len(jpeg) // 2], False),
        ("half.png", png[: len(png) // 2], False),
        ("header-only.jpg", jpeg[:600], False),
        ("bomb.png", png_header_only(100_000, 100_000), False),
        ("soi-then-garbage.jpg", b"\xff\xd8\xff" + bytes(range(256)) * 8, False),
        ("random.jpg", bytes((i * 7919 + 13) % 256 for i in range(5000)), False),
        ("photos.zip", archive.getvalue(), False),
        ("photo.jpg.gz", gzip.compress(jpeg), False),
        ("gif-header.gif", b"GIF89a\x10\x00\x10\x00", False),
        ("png-signature.png", b"\x89PNG\r\n\x1a\n", False),
        ("zeros.jpg", bytes(4096), False),
    ]
    return corpus


def test_the_bad_input_corpus_gets_a_search_or_a_clear_refusal_never_a_500(client, monkeypatch):
    """Every file of the corpus through the upload form: a usable picture becomes a search (its
    query saved as a normalised JPEG), anything else a 400 naming what is wrong; never a 500."""
    from search import views

    monkeypatch.setattr(views, "enqueue_search", lambda job_id: "not-queued")  # no worker needed
    outcomes = {}
    for name, content, usable in bad_input_corpus():
        before = SearchJob.objects.count()
        response = post(client, image=upload(name, content))
        outcomes[name] = response.status_code
        if usable:
            assert response.status_code == 302, (name, response.content.decode()[-600:])
            with Image.open(SearchJob.objects.latest("pk").query_image.path) as saved:
                assert saved.format == "JPEG" and saved.mode == "RGB", name
        else:
            page = response.content.decode()
            assert response.status_code == 400 and 'class="errorlist' in page, (name, response.status_code)
            assert SearchJob.objects.count() == before, name
    assert len(outcomes) == 34 and 500 not in outcomes.values()
