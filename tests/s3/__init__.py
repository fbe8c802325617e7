"""A real S3-compatible store for tests: OpenStack Swift with s3api + tempauth (see ``fixtures``)."""
