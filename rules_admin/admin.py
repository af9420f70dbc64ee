"""The merchandiser console is Django's admin with the console's site (`rules_admin.site`): the Surface
configuration's admin lives in `surface_app/admin.py`, CSV import / export in `rules_admin.csv_io`."""
