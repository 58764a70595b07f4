"""The reconciler: TokenBudgets and ThinkTiers onto the sidecars of the pods they select, usage back onto status.

Never imports the injector. See handlers.py for the shape (indexes wake one Fleet whose loops do the work).
"""
