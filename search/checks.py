"""The engine's settings checked by Django's system checks (``manage.py check``, ``runserver``,
``migrate`` and every engine command run them first): a misspelt ``RETRIEVAL_*`` value stops the
program at its start, named, instead of failing the first search or a training half done; a
``RETRIEVAL_*`` variable that names no setting is warned about (it would be ignored)."""
import os

from django.conf import settings
from django.core.checks import Error, Warning, register


@register()
def engine_settings(app_configs=None, **kwargs):
    from .engine.settings_check import describe_problems

    return [Error(problem, hint="Correct or unset the environment variable (README, Settings).",
                  id="search.E001") for problem in describe_problems(settings.RETRIEVAL)]


@register()
def unknown_engine_variables(app_configs=None, **kwargs):
    from .engine.settings_check import unknown_variables

    return [Warning(problem, hint="Rename or unset the environment variable (README, Settings).",
                    id="search.W001") for problem in unknown_variables(os.environ)]
