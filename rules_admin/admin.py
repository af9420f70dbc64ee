"""The merchandiser console is Django's admin with the console's site (`rules_admin.site`): the Surface
configuration's admin lives in `rules_admin.surface_admin` (registered by importing it here, where the admin's
autodiscovery looks), CSV import / export in `rules_admin.csv_io`."""

from rules_admin import surface_admin  # noqa: F401  # registers the Surface models' admin
