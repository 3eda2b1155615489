"""The one API error format: {"detail", "code"} with its 4xx status; validation errors list their fields."""

import pytest
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions, serializers

from core.errors import ApplicationError, api_exception_handler


class Item(serializers.Serializer):
    name = serializers.CharField()


class Order(serializers.Serializer):
    reference = serializers.CharField(max_length=3)
    items = Item(many=True)


def handle(exc: Exception):
    response = api_exception_handler(exc, {"request": None, "view": None})
    assert response is not None
    return response.status_code, response.data


def test_validation_errors_keep_every_field_as_an_errors_list():
    order = Order(data={"reference": "too long", "items": [{"name": "ok"}, {}]})
    assert not order.is_valid()
    status, body = handle(exceptions.ValidationError(order.errors))
    assert status == 400
    assert body["code"] == "invalid"
    assert body["detail"] == "reference: Ensure this field has no more than 3 characters. (and 1 more)"
    assert body["errors"] == [
        {
            "field": "reference",
            "message": "Ensure this field has no more than 3 characters.",
            "code": "max_length",
        },
        {"field": "items[1].name", "message": "This field is required.", "code": "required"},
    ]


@pytest.mark.parametrize(
    "exc, status, code",
    [
        (exceptions.NotAuthenticated(), 401, "not_authenticated"),
        (exceptions.PermissionDenied(), 403, "permission_denied"),
        (PermissionDenied(), 403, "permission_denied"),
        (Http404(), 404, "not_found"),
        (exceptions.MethodNotAllowed("PATCH"), 405, "method_not_allowed"),
        (exceptions.ParseError(), 400, "parse_error"),
        (exceptions.UnsupportedMediaType("text/plain"), 415, "unsupported_media_type"),
        (
            RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE."),
            413,
            "payload_too_large",
        ),
        (exceptions.Throttled(wait=3), 429, "throttled"),
        (ApplicationError("already decided", code="already_decided", status=409), 409, "already_decided"),
    ],
)
def test_every_error_is_detail_and_code(exc, status, code):
    got_status, body = handle(exc)
    assert got_status == status
    assert body["code"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    assert set(body) == {"detail", "code"}


def test_a_bug_is_not_turned_into_a_4xx():
    assert api_exception_handler(KeyError("oops"), {"request": None, "view": None}) is None
