"""OTLP/HTTP metrics wire formats: decoding export requests, encoding responses."""

from guardrail.adapters.otlp.codec import (
    JSON,
    PROTOBUF,
    decode_json,
    decode_protobuf,
    encode_response,
    encode_status,
)

__all__ = ["JSON", "PROTOBUF", "decode_json", "decode_protobuf", "encode_response", "encode_status"]
