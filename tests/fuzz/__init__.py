"""Fuzz targets for the parsers that face the network (`make fuzz`), and the peers they share
with the property tests in tests/unit/test_protocol_properties.py."""
