from django.contrib import admin

admin.site.site_header = "Personalization console"
admin.site.site_title = "Personalization console"
admin.site.index_title = "Catalog, signals, models and API keys"
