"""Console: the merchandiser console (admin site): rules, placements, previews, dashboards."""
