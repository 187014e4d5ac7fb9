"""Django admin for the routing configuration, client API keys, the read-only request log and automatic selection.

Upstream keys are write-only here: a form field sets or clears them and pages show only `api_key_display()`. One
module per area: `configuration` (providers, models, instances, routing settings), `keys` (client API keys), `logs`
(probe results and the request log), `selection` (recent selections and the try-it page); `forms` holds their forms,
`dashboard` the index page's figures (shown by `chatvault_site.admin_site`), `decision_story` a logged decision told
for people.
"""

from django.conf import settings
from django.contrib import admin
from django.shortcuts import render

from routing.admin import configuration, keys, logs, selection  # noqa: F401  (registers the ModelAdmins)
from routing.admin.selection import ANY_KEY, TRY_TOOL  # noqa: F401  (used by the try-it page's tests)

admin.site.site_header = "ChatVault administration"
admin.site.site_title = "ChatVault admin"
admin.site.index_title = "Dashboard"


def login_lockout_response(request, original_response=None, credentials=None):
    """Return the page a locked-out admin sign-in gets (django-axes' AXES_LOCKOUT_CALLABLE)."""
    context = {
        **admin.site.each_context(request),
        "title": "Sign-in locked",
        "lockout_minutes": settings.CHATVAULT_LOGIN_LOCKOUT_MINUTES,
    }
    return render(request, "admin/login_locked.html", context, status=429)
