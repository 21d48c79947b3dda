"""Small shared pieces of the services: protobuf bindings and their conversions."""
