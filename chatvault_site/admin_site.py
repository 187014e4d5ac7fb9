"""ChatVault's admin site: Django's, with the operator dashboard (`routing.admin.dashboard`) on its index page.

It is `django.contrib.admin.site` (through `chatvault_site.apps.AdminConfig`), so every `@admin.register` uses it.
"""

from django.contrib import admin


class AdminSite(admin.AdminSite):
    """The admin site whose index shows the dashboard above the app list."""

    def index(self, request, extra_context=None):
        """Show the dashboard (for `?window=1h` or `24h`) and the app list."""
        # Imported here: routing.admin registers its ModelAdmins on this very site as it is imported, so it cannot be
        # imported while the site is being made.
        from routing.admin.dashboard import dashboard

        context = {}
        if request.user.has_perm("routing.view_providerinstance"):  # what it shows is mostly the instances' state
            context["dashboard"] = dashboard(request.GET.get("window", ""))
        return super().index(request, {**context, **(extra_context or {})})
