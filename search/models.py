"""Database models (search jobs, ratings) arrive with the web issue; the engine needs none."""
