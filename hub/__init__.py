"""Tiangong hub package."""
