"""Thinning: physically removing pruned filters and channels (registers the thinning extensions)."""
