"""Webhooks: outbound deliveries to callers (Standard Webhooks), and fal's inbound ones."""
