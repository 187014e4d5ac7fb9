"""App configs of the project itself: Django's admin, served by ChatVault's admin site (the dashboard index)."""

from django.contrib.admin.apps import AdminConfig as DjangoAdminConfig


class AdminConfig(DjangoAdminConfig):
    """Django's admin app, with `chatvault_site.admin_site.AdminSite` as `admin.site`."""

    default_site = "chatvault_site.admin_site.AdminSite"
