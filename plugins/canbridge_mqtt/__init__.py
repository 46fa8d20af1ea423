"""canbridge's MQTT northbound plugin: a Sparkplug B 3.0 edge node and plain JSON topics, with
store-and-forward on disk (docs/mqtt.md)."""
