"""Event streams: accepted events, as Pinpoint's event-stream JSON, to Kinesis, Firehose or Kafka."""
