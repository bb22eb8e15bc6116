"""Clarion: a self-hosted mobile engagement platform speaking Batch's REST API 1.x."""
