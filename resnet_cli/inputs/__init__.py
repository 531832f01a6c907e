"""Where images come from: sources (files, folders, globs, stdin, URLs, s3://), reading by scheme,
decoding."""
