#!/usr/bin/env python
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # Cluster mode's commands: its own data folder, and its servers started before the settings read their URLs.
    from operations.cluster import command_environ_prepare

    command_environ_prepare(sys.argv, os.environ)
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
