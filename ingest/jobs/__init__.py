"""Import and export jobs: endpoint definitions from S3 or files into Kafka, and out again."""
