"""The mapping: signal database formats, the mapping table, generated codecs."""
