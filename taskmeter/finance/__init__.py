"""Finance: figures an accountant can check against the providers' own bills.

report file ─ reports.load_report ─▶ CostReport (provider USD per UTC day, model, project)
store ─ reconcile.taskmeter_costs ─▶ taskmeter USD per UTC day, model, BYOK
both ─ reconcile.reconcile ─▶ rows: provider, taskmeter, BYOK, difference, ratio, flag

current price rules ─ reprice_plan.plan ─▶ what would change (calls, streams, tasks, credits by
model, user and month) ─ reprice.apply ─▶ bounded transactions, resumable, logged
"""
