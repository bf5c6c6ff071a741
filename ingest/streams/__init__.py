"""Event streams: every accepted event, as Pinpoint's event-stream JSON, to an app's Kinesis stream, Firehose delivery stream or Kafka topic."""
