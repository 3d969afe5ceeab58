"""Storage: the gallery (people, templates and their face crops, in SQLite) and owner-only files
(0700 folders, 0600 files, atomic writes).

May import: `settings`, `errors` only.
"""
