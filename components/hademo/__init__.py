"""hademo: a test-only HTTP responder that embeds the HA agent (tests/integration/test_ha_agent.py)."""
