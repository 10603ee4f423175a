"""The PostgreSQL backend: a store in a schema of a PostgreSQL database, shared by every
process and host that opens it (``postgresql://`` locations; the ``postgres`` extra)."""
