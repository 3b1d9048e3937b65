"""Pricing: USD per call (genai-prices + operator overrides), credits, BYOK, credit accounts."""
