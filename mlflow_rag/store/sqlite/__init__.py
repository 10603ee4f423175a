"""The SQLite backend: the store's default, one file beside its index folder."""
