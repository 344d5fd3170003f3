"""Built-in teachers plugins."""
