"""Kafka: aiokafka clients and topics, the bounded publisher, the embedded broker."""
