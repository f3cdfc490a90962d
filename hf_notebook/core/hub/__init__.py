"""Hub access: resolve a revision to its sha, fetch files, read headers, lock, push, export bundles."""
