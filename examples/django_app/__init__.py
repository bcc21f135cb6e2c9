"""A small Django project with Gainsight PX added by one line in ``MIDDLEWARE``.

    gunicorn examples.django_app.wsgi            # WSGI
    uvicorn examples.django_app.asgi:application # ASGI

Login (``django.contrib.auth`` views), a page per user, the admin, static files by
whitenoise. The SQLite database (``DJANGO_APP_DB``, default ``.demo/django_app.sqlite3``)
is created on first start with the demo users alice@acme.test / alice (staff, can use
the admin) and bob@globex.test / bob. ``PX_*`` settings come from the environment.
"""
