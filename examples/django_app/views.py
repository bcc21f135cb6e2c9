"""The example's pages: nothing here knows about PX."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html")


@login_required  # type: ignore[untyped-decorator]
def me(request: HttpRequest) -> HttpResponse:
    return redirect("profile", pk=request.user.pk)


@login_required  # type: ignore[untyped-decorator]
def profile(request: HttpRequest, pk: int) -> HttpResponse:
    person = get_object_or_404(get_user_model(), pk=pk)
    return render(request, "profile.html", {"person": person})


def api_me(request: HttpRequest) -> JsonResponse:
    user = request.user
    if not user.is_authenticated:
        return JsonResponse({"user": None})
    return JsonResponse({"user": {"id": user.pk, "email": user.email}})


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")
