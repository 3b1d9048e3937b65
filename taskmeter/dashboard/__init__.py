"""The web dashboard: static pages served by `taskmeter serve`, built on the public read API."""
