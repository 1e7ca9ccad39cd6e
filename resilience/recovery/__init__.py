"""Worker heartbeats and the stuck-job sweep."""
