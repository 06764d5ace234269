"""The engine's settings checked by Django's system checks (``manage.py check``, ``runserver``,
``migrate`` and every engine command run them first): a misspelt ``RETRIEVAL_*`` value stops the
program at its start, named, instead of failing the first search or a training half done."""
from django.conf import settings
from django.core.checks import Error, register


@register()
def engine_settings(app_configs=None, **kwargs):
    from .engine.settings_check import describe_problems

    return [Error(problem, hint="Correct or unset the environment variable (README, Settings).",
                  id="search.E001") for problem in describe_problems(settings.RETRIEVAL)]
