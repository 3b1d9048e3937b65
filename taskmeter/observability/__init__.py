"""Observability: what the service tells its operators about itself (Prometheus metrics).

requests ─ metrics.RequestTimer ─▶ ProcessMetrics ─┐
store rollups ─ metrics.store_figures ─────────────┴─ metrics.render ─▶ GET /metrics
"""
