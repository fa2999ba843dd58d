"""Tiangong agent package."""
