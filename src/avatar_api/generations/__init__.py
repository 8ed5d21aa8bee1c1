"""Generating images with a trained avatar: queued, submitted to fal, copied into storage."""
