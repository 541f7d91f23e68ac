"""Where artifacts live: URIs (local paths, s3://), atomic artifact directories, lineage."""
