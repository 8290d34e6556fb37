"""Helpers shared by the test modules (imported as ``support.<module>``; test modules never import each other)."""
