"""The record: the database schema, migrations, and every read and write of rounds, choices and studies.
Nothing here imports torch."""
