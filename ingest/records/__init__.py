"""The pure write-path core: request bodies → validated records → Avro bytes."""
