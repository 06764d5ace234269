#!/usr/bin/env python
"""Django's command-line utility: the site, and the engine's commands (train, index, search, evaluate, ...)."""
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "retrieval_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
