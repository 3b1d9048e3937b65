"""taskmeter: usage metering and cost accounting for AI agent platforms."""

__version__ = "0.1.0"
