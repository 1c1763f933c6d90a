"""embedq queue server: the OpenAI embeddings API in front of a PostgreSQL queue."""

__version__ = "0.1.0"
