"""Retrieval metrics and one evaluation function per protocol (shapes, CIRR, FashionIQ)."""
