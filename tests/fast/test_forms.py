"""Fast tier: the upload form validates by decoding, without a database, broker or model."""
import io

from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from search.forms import SearchForm
from tests.conftest import corel_image


def form(**files_and_fields):
    files = {k: v for k, v in files_and_fields.items() if isinstance(v, SimpleUploadedFile)}
    data = {k: v for k, v in files_and_fields.items() if k not in files}
    return SearchForm(data, files)


def test_a_real_photo_is_accepted_and_normalised_to_jpeg():
    f = form(image=SimpleUploadedFile("bus.png", corel_image(301).read_bytes()), method="pca", k="5")
    assert f.is_valid(), f.errors
    saved = f.cleaned_data["image"]
    assert saved.name == "bus.jpg" and f.cleaned_data["method"] == "pca" and f.cleaned_data["k"] == 5
    with Image.open(io.BytesIO(saved.read())) as image:
        assert image.format == "JPEG" and image.size == (384, 256)


def test_defaults_and_errors(settings):
    f = form(image=SimpleUploadedFile("a.jpg", corel_image(1).read_bytes()))
    assert f.is_valid() and f.cleaned_data["method"] == "hybrid+attention"
    assert f.cleaned_data["k"] == settings.RETRIEVAL.top_k
    f = form(image=SimpleUploadedFile("a.jpg", b"not an image at all"), method="colour")
    assert not f.is_valid()
    assert "not an image file" in f.errors["image"][0] and "colour" in f.errors["method"][0]
    assert "form field 'image'" in form(photo=SimpleUploadedFile("a.jpg", b"x")).errors["image"][0]


def test_method_names_show_the_configured_pca_size(settings):
    settings.RETRIEVAL = settings.RETRIEVAL.replace(pca_dim=64)
    labels = dict(SearchForm().fields["method"].choices)
    assert "(64 numbers per image)" in labels["pca"] and labels["pca"].endswith("[pca]")
    assert "(64 numbers per image)" in labels["pca+attention"]
