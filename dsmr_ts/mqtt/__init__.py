"""MQTT: DSMR-reader's topics for Home Assistant and friends (publisher.py explains the design)."""
