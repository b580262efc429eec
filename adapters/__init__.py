"""effv2 package."""
