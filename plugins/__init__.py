"""Built-in plugins; each module registers through the same pluggy hooks a third party uses."""
