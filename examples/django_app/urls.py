from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from examples.django_app import views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("me/", views.me, name="me"),
    path("u/<int:pk>/", views.profile, name="profile"),
    path("api/me", views.api_me, name="api_me"),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
]
