"""PostgreSQL plumbing: the connection pool and the versioned schema migrations."""
