"""The upload form: size checked before decoding, content checked by decoding,
and the image saved normalised (EXIF orientation applied, RGB, JPEG)."""
from __future__ import annotations

import io

from django import forms
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from .engine.errors import ImageError
from .engine.images import open_image
from .engine.methods import DEFAULT_METHOD, METHODS, method_label


def method_choices() -> list[tuple[str, str]]:
    return [(m, method_label(m, settings.RETRIEVAL.pca_dim)) for m in METHODS]


class SearchForm(forms.Form):
    # image/* lets phones offer their camera beside the photo library
    image = forms.FileField(label="Query image", widget=forms.ClearableFileInput(attrs={"accept": "image/*,.heic,.heif"}),
                            required=False, error_messages={"empty": "The uploaded file is empty."})
    url = forms.URLField(label="or the address of an image on the web", required=False, assume_scheme="https",
                         max_length=2000, widget=forms.URLInput(attrs={"placeholder": "https://…/photo.jpg"}))
    method = forms.ChoiceField(choices=method_choices, initial=DEFAULT_METHOD, required=False)
    k = forms.IntegerField(min_value=1, max_value=100, initial=10, label="Results (k)", required=False)

    def clean_method(self):
        return self.cleaned_data.get("method") or DEFAULT_METHOD

    def clean_k(self):
        return self.cleaned_data.get("k") or settings.RETRIEVAL.top_k

    def clean_image(self):
        upload = self.cleaned_data["image"]
        if not upload:
            return None
        limit = settings.UPLOAD_MAX_BYTES
        if upload.size > limit:
            raise forms.ValidationError(
                f"The file is {upload.size / 2**20:.2f} MB; the limit is {limit / 2**20:.2f} MB.")
        return _normalised(upload, upload.name)

    def clean(self):
        data = super().clean()
        if self.errors.get("image") or self.errors.get("url"):
            return data
        if not data.get("image") and not data.get("url"):
            self.add_error("image", "Choose an image file to search with (form field 'image'), "
                                    "or give an image's address (field 'url').")
        elif not data.get("image"):
            from .fetch import FetchError, fetch_image_bytes

            url = data["url"]
            try:
                body = fetch_image_bytes(url)
            except FetchError as exc:
                self.add_error("url", f"No image could be fetched from that address: {exc}.")
                return data
            name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "web-image"
            try:
                data["image"] = _normalised(io.BytesIO(body), name, field="url")
            except forms.ValidationError as exc:
                self.add_error("url", exc)
        return data


def _normalised(upload, name: str, field: str = "image") -> SimpleUploadedFile:
    """The picture decoded (which is the content check) and saved as a normalised JPEG."""
    try:
        image = open_image(upload)
    except ImageError as exc:
        what = "This file" if field == "image" else "What is at that address"
        reason = _without_name(exc, upload) if hasattr(upload, "name") else str(exc).split(": ", 1)[-1]
        raise forms.ValidationError(f"{what} cannot be used as an image: {reason}")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    stem = (name or "query").rsplit("/", 1)[-1].rsplit(".", 1)[0][:80] or "query"
    return SimpleUploadedFile(f"{stem}.jpg", buffer.getvalue(), content_type="image/jpeg")


def _without_name(exc: Exception, upload) -> str:
    """The engine names the file first ('<name>: reason'); on the form the reason is enough."""
    text = str(exc)
    for prefix in (f"{upload.name}: ", f"{getattr(upload.file, 'name', '')}: "):
        if prefix.strip(": ") and text.startswith(prefix):
            return text[len(prefix):]
    return text.split(": ", 1)[1] if ": " in text else text


class MaintenanceForm(forms.Form):
    """Staff: start a reindex or a retrain, optionally of another folder on the server, or an
    evaluation of the active index."""
    kind = forms.ChoiceField(choices=[("reindex", "reindex"), ("train", "retrain"), ("evaluate", "evaluate")])
    collection_dir = forms.CharField(required=False, max_length=500, label="Collection folder on the server",
                                     help_text="empty: the folder of the active index")
    labels = forms.CharField(required=False, max_length=500, label="Labels",
                             help_text="'folders', a path,label CSV on the server, 'none' (a retrain then keeps "
                                       "the ImageNet classifier and trains the attention head on its predictions), "
                                       "or empty")

    def clean_collection_dir(self):
        value = self.cleaned_data["collection_dir"].strip()
        if not value:
            return value
        path = within_staff_roots(value)
        if not path.is_dir():
            raise forms.ValidationError(f"{value} is not a folder on the server")
        return str(path)

    def clean_labels(self):
        value = self.cleaned_data["labels"].strip()
        if not value or value in ("folders", "none"):
            return value
        path = within_staff_roots(value)
        if not path.is_file():
            raise forms.ValidationError(f"{value} is neither 'folders', 'none' nor a CSV file on the server")
        return str(path)


def within_staff_roots(value: str):
    """An absolute path inside one of STAFF_FOLDER_ROOTS (symbolic links and '..' resolved
    first): the site serves the images of whatever folder it indexes, so staff may point it only
    at folders the operator opened for that."""
    from pathlib import Path

    path = Path(value)
    if not path.is_absolute():
        raise forms.ValidationError(f"{value}: give an absolute path on the server")
    path = path.resolve()
    roots = [Path(root).resolve() for root in settings.STAFF_FOLDER_ROOTS]
    if not any(path == root or root in path.parents for root in roots):
        raise forms.ValidationError(
            f"{value} is outside the folders staff may use ({', '.join(str(r) for r in roots)}; "
            "the STAFF_FOLDER_ROOTS setting)")
    return path


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleImageField(forms.FileField):
    widget = MultipleFileInput

    def clean(self, data, initial=None):
        files = [f for f in (data if isinstance(data, (list, tuple)) else [data]) if f]
        if not files:
            super().clean(None, initial)  # raises 'required'
        return [super(MultipleImageField, self).clean(f, initial) for f in files]


class CollectionUploadForm(forms.Form):
    """Staff: add images to the active index, with an optional class label; an 'add' run makes
    them searchable without a rebuild. Pictures are decoded and normalised like a query; a zip
    archive of pictures is checked here (damage, encryption, the limits) and unpacked when staged,
    its pictures decoded by the run, which skips with the reason what is no picture."""
    images = MultipleImageField(label="Images or zip archives of images",
                                error_messages={"required": "Choose one or more image files or zip archives."})
    label = forms.SlugField(max_length=60, label="Class label", required=False)

    def clean_images(self):
        from .archives import ArchiveError, check_archive, is_zip

        limit = settings.UPLOAD_MAX_BYTES
        items = []
        for upload in self.cleaned_data["images"]:
            if is_zip(upload) or upload.name.lower().endswith(".zip"):
                try:
                    check_archive(upload, upload.name, archive_limits())
                except ArchiveError as exc:
                    raise forms.ValidationError(str(exc))
                items.append(("zip", upload.name, upload))
                continue
            if upload.size > limit:
                raise forms.ValidationError(f"{upload.name} is over the limit of {limit / 2**20:.2f} MB.")
            try:
                items.append(("image", upload.name, open_image(upload)))
            except ImageError as exc:
                raise forms.ValidationError(f"{upload.name} cannot be used as an image: {_without_name(exc, upload)}")
        return items


def archive_limits():
    from .archives import ArchiveLimits

    return ArchiveLimits(max_images=settings.ARCHIVE_MAX_IMAGES, max_image_bytes=settings.UPLOAD_MAX_BYTES,
                         max_total_bytes=settings.ARCHIVE_MAX_BYTES)
